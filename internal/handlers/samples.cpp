#include "handlers/samples.hpp"

namespace evp::handlers {
namespace {

std::string Id(const char* prefix, uint64_t n) { return std::string(prefix) + std::to_string(n); }

nlohmann::json Chat(const std::string& company, uint64_t s, int64_t now) {
  return {{"chat_id", Id("chat-", s % 5000)},
          {"company_id", company},
          {"agent_id", Id("agent-", s % 20)},
          {"jid", "5511" + std::to_string(900000000 + s % 5000) + "@s.whatsapp.net"},
          {"phone_number", "+5511" + std::to_string(900000000 + s % 5000)},
          {"push_name", "Customer " + std::to_string(s % 5000)},
          {"is_group", false},
          {"not_spam", true},
          {"unread_count", static_cast<int64_t>(s % 7)},
          {"conversation_timestamp", now},
          {"last_message", {{"text", "See you tomorrow"}, {"from_me", false}}}};
}

nlohmann::json Message(const std::string& company, uint64_t s, int64_t now) {
  return {
      {"message_id", Id("msg-", s)},
      {"company_id", company},
      {"chat_id", Id("chat-", s % 5000)},
      {"agent_id", Id("agent-", s % 20)},
      {"jid", "5511" + std::to_string(900000000 + s % 5000) + "@s.whatsapp.net"},
      {"flow", s % 2 == 0 ? "IN" : "OUT"},
      {"from_phone", "+5511" + std::to_string(900000000 + s % 5000)},
      {"to_phone", "+5511000000" + std::to_string(s % 20)},
      {"message_type", "text"},
      {"message_text", "Hello! Is my order #" + std::to_string(s) + " on its way?"},
      {"key", {{"id", Id("ABCD", s)}, {"from_me", s % 2 == 1}, {"remote_jid", "x@s.whatsapp.net"}}},
      {"status", "delivered"},
      {"message_timestamp", now}};
}

nlohmann::json Contact(const std::string& company, uint64_t s) {
  return {{"phone_number", "+5511" + std::to_string(900000000 + s % 5000)},
          {"agent_id", Id("agent-", s % 20)},
          {"company_id", company},
          {"push_name", "Customer " + std::to_string(s % 5000)},
          {"type", "PERSONAL"},
          {"status", "ACTIVE"},
          {"tags", {"vip", "newsletter"}},
          {"origin", "Website"}};
}

}  // namespace

nlohmann::json SamplePayload(EventType type, const std::string& company, const SampleOptions& o) {
  const uint64_t s = o.seed;
  const int64_t now = o.now_unix;
  switch (type) {
    case EventType::kChatsUpsert:
      return Chat(company, s, now);
    case EventType::kChatsUpdate:
      return {{"chat_id", Id("chat-", s % 5000)},
              {"company_id", company},
              {"unread_count", 0},
              {"conversation_timestamp", now}};
    case EventType::kMessagesUpsert:
      return Message(company, s, now);
    case EventType::kMessagesUpdate:
      return {{"message_id", Id("msg-", s)},
              {"company_id", company},
              {"status", "read"},
              {"timestamp", now}};
    case EventType::kContactsUpsert:
      return Contact(company, s);
    case EventType::kContactsUpdate:
      return {{"phone_number", "+5511" + std::to_string(900000000 + s % 5000)},
              {"agent_id", Id("agent-", s % 20)},
              {"company_id", company},
              {"notes", "Prefers morning calls"}};
    case EventType::kConnectionUpdate:
      return {{"agent_id", Id("agent-", s % 20)},
              {"company_id", company},
              {"status", "connected"},
              {"agent_name", "Support " + std::to_string(s % 20)},
              {"host_name", "wa-gateway-1"},
              {"version", "2.3.1"}};
    case EventType::kHistoryChats:
    case EventType::kHistoryMessages:
    case EventType::kHistoryContacts: {
      nlohmann::json items = nlohmann::json::array();
      for (int i = 0; i < o.history_items; ++i) {
        // Seeds spaced by a prime: different seeds give different chats, contacts and agents
        // (ids are taken modulo 5,000 and 20), and their message ids never meet.
        const uint64_t si = s * 100'003 + static_cast<uint64_t>(i);
        if (type == EventType::kHistoryChats) {
          items.push_back(Chat(company, si, now - 86400));
        } else if (type == EventType::kHistoryMessages) {
          items.push_back(Message(company, si, now - 86400));
        } else {
          items.push_back(Contact(company, si));
        }
      }
      return {{std::string(HistoryArrayKey(type)), items}};
    }
  }
  return nlohmann::json::object();
}

}  // namespace evp::handlers
