#include "handlers/mutation.hpp"

#include <array>
#include <cassert>
#include <tuple>
#include <utility>

#include "validation/json_spans.hpp"

namespace evp::handlers {
namespace {

using T = ColumnType;

constexpr std::array<Column, 14> kChatColumns = {{
    {"chat_id", T::kText},
    {"company_id", T::kText},
    {"agent_id", T::kText},
    {"jid", T::kText},
    {"phone_number", T::kText},
    {"push_name", T::kText},
    {"group_name", T::kText},
    {"custom_name", T::kText},
    {"assigned_to", T::kText},
    {"is_group", T::kBool},
    {"not_spam", T::kBool},
    {"unread_count", T::kBigint},
    {"conversation_timestamp", T::kBigint},
    {"last_message", T::kJsonb},
}};

constexpr std::array<Column, 18> kMessageColumns = {{
    {"message_id", T::kText},
    {"company_id", T::kText},
    {"chat_id", T::kText},
    {"agent_id", T::kText},
    {"jid", T::kText},
    {"flow", T::kText},
    {"from_phone", T::kText},
    {"to_phone", T::kText},
    {"message_type", T::kText},
    {"message_text", T::kText},
    {"message_url", T::kText},
    {"message_obj", T::kJsonb},
    {"key", T::kJsonb},
    {"status", T::kText},
    {"message_timestamp", T::kBigint},
    {"campaign", T::kJsonb},
    {"is_deleted", T::kBool},
    {"edited_message_obj", T::kJsonb},
}};

constexpr std::array<Column, 13> kContactColumns = {{
    {"agent_id", T::kText},
    {"phone_number", T::kText},
    {"company_id", T::kText},
    {"chat_id", T::kText},
    {"push_name", T::kText},
    {"custom_name", T::kText},
    {"type", T::kText},
    {"status", T::kText},
    {"notes", T::kText},
    {"tags", T::kTextArray},
    {"avatar", T::kText},
    {"assigned_to", T::kText},
    {"origin", T::kText},
}};

constexpr std::array<Column, 8> kAgentColumns = {{
    {"agent_id", T::kText},
    {"company_id", T::kText},
    {"status", T::kText},
    {"agent_name", T::kText},
    {"phone_number", T::kText},
    {"host_name", T::kText},
    {"version", T::kText},
    {"qr_code", T::kText},
}};

const TableDef kChats{Table::kChats, "chats", kChatColumns, 1};
const TableDef kMessages{Table::kMessages, "messages", kMessageColumns, 1};
const TableDef kContacts{Table::kContacts, "contacts", kContactColumns, 2};
const TableDef kAgents{Table::kAgents, "agents", kAgentColumns, 1};

// The table and kind of write of an event type.
std::pair<Table, WriteKind> TargetOf(EventType type) {
  switch (type) {
    case EventType::kChatsUpsert:
      return {Table::kChats, WriteKind::kUpsert};
    case EventType::kChatsUpdate:
      return {Table::kChats, WriteKind::kUpdate};
    case EventType::kMessagesUpsert:
      return {Table::kMessages, WriteKind::kUpsert};
    case EventType::kMessagesUpdate:
      return {Table::kMessages, WriteKind::kUpdate};
    case EventType::kContactsUpsert:
      return {Table::kContacts, WriteKind::kUpsert};
    case EventType::kContactsUpdate:
      return {Table::kContacts, WriteKind::kUpdate};
    case EventType::kConnectionUpdate:
      // Agents appear by connecting: a connection update creates the agent row.
      return {Table::kAgents, WriteKind::kUpsert};
    default:
      assert(false && "history envelopes are split into items before BuildMutation");
      return {Table::kChats, WriteKind::kUpsert};
  }
}

// A number the parser holds as a double: what it prints may differ from what was sent.
bool HoldsFloat(const nlohmann::json& v) {
  if (v.is_number_float()) return true;
  if (v.is_structured()) {
    for (const auto& e : v) {
      if (HoldsFloat(e)) return true;
    }
  }
  return false;
}

std::string ToText(const Column& col, const nlohmann::json& v) {
  switch (col.type) {
    case T::kText:
      return v.get<std::string>();
    case T::kBigint:
      return std::to_string(v.get<int64_t>());
    case T::kBool:
      return v.get<bool>() ? "true" : "false";
    case T::kJsonb:
    case T::kTextArray:
      return v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  return "";
}

std::optional<int64_t> IntField(const nlohmann::json& doc, const char* name) {
  auto it = doc.find(name);
  if (it == doc.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<int64_t>();
}

std::string StringField(const nlohmann::json& doc, const char* name) {
  auto it = doc.find(name);
  if (it == doc.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

}  // namespace

const TableDef& Definition(Table table) {
  switch (table) {
    case Table::kChats:
      return kChats;
    case Table::kMessages:
      return kMessages;
    case Table::kContacts:
      return kContacts;
    case Table::kAgents:
      return kAgents;
  }
  return kChats;
}

std::string Mutation::KeyText() const {
  const TableDef& def = Definition(table);
  std::string out;
  for (size_t i = 0; i < def.key_count && i < values.size(); ++i) {
    if (!out.empty()) out += ",";
    out += std::string(values[i].column->name) + "=" + values[i].text;
  }
  return out;
}

Version EventVersion(EventType type, const nlohmann::json& doc, int64_t publish_seconds,
                     Source source, uint64_t stream_seq) {
  std::optional<int64_t> ts;
  switch (type) {
    case EventType::kChatsUpsert:
    case EventType::kChatsUpdate:
      ts = IntField(doc, "conversation_timestamp");
      break;
    case EventType::kMessagesUpsert:
      ts = IntField(doc, "message_timestamp");
      break;
    case EventType::kMessagesUpdate:
      ts = IntField(doc, "timestamp");
      break;
    default:
      break;
  }
  return Version{ts.value_or(publish_seconds), source, stream_seq};
}

Mutation BuildMutation(EventType type, const nlohmann::json& doc, const std::string& company_id,
                       const Version& version, std::string_view text) {
  Mutation m;
  m.company_id = company_id;
  m.version = version;
  std::tie(m.table, m.kind) = TargetOf(type);
  const TableDef& def = Definition(m.table);
  m.values.reserve(def.columns.size());
  for (const Column& col : def.columns) {
    if (col.name == "company_id") {
      m.values.push_back({&col, company_id});
      continue;
    }
    auto it = doc.find(col.name);  // heterogeneous lookup: no string built
    if (it == doc.end() || it->is_null()) continue;
    if (col.type == T::kJsonb && !text.empty() && HoldsFloat(*it)) {
      if (auto exact = validation::MemberSpan(text, col.name)) {
        m.values.push_back({&col, std::string(*exact)});
        continue;
      }
    }
    m.values.push_back({&col, ToText(col, *it)});
  }
  if (type == EventType::kMessagesUpsert && version.source == Source::kRealtime &&
      StringField(doc, "flow") == "IN" && !StringField(doc, "agent_id").empty() &&
      !StringField(doc, "from_phone").empty()) {
    Onboarding ob;
    ob.agent_id = StringField(doc, "agent_id");
    ob.phone_number = StringField(doc, "from_phone");
    ob.chat_id = StringField(doc, "chat_id");
    ob.message_id = StringField(doc, "message_id");
    ob.origin = "DirectChat";
    ob.tags = {"Onboarded"};
    auto campaign = doc.find("campaign");
    if (campaign != doc.end() && campaign->is_object()) {
      if (auto o = campaign->find("origin"); o != campaign->end() && o->is_string()) {
        ob.origin = o->get<std::string>();
      }
      if (auto t = campaign->find("tags"); t != campaign->end() && t->is_array()) {
        ob.tags.clear();
        for (const auto& tag : *t) {
          if (tag.is_string()) ob.tags.push_back(tag.get<std::string>());  // the schema's rule
        }
      }
      if (auto a = campaign->find("assigned_to"); a != campaign->end() && a->is_string()) {
        ob.assigned_to = a->get<std::string>();
      }
    }
    m.onboarding = std::move(ob);
  }
  return m;
}

bool NeedsExactText(EventType type, const nlohmann::json& doc) {
  for (const Column& col : Definition(TargetOf(type).first).columns) {
    if (col.type != T::kJsonb) continue;
    auto it = doc.find(col.name);
    if (it != doc.end() && HoldsFloat(*it)) return true;
  }
  return false;
}

}  // namespace evp::handlers
