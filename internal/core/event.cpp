#include "core/event.hpp"

#include <cassert>

namespace evp {
namespace {

constexpr std::array<std::string_view, 10> kTypeNames = {
    "chats.upsert",     "chats.update",     "messages.upsert",   "messages.update",
    "contacts.upsert",  "contacts.update",  "connection.update", "history.chats",
    "history.messages", "history.contacts",
};

constexpr std::array<std::string_view, 9> kReasonNames = {
    "malformed_json",        "schema_violation",     "invalid_tenant",
    "tenant_mismatch",       "unknown_type",         "too_large",
    "not_found_after_grace", "constraint_violation", "retries_exhausted",
};

}  // namespace

std::string_view EventTypeName(EventType type) { return kTypeNames[static_cast<size_t>(type)]; }

std::optional<EventType> EventTypeFromName(std::string_view name) {
  for (size_t i = 0; i < kTypeNames.size(); ++i) {
    if (kTypeNames[i] == name) return static_cast<EventType>(i);
  }
  return std::nullopt;
}

bool IsHistory(EventType type) {
  return type == EventType::kHistoryChats || type == EventType::kHistoryMessages ||
         type == EventType::kHistoryContacts;
}

EventType HistoryItemType(EventType type) {
  switch (type) {
    case EventType::kHistoryChats:
      return EventType::kChatsUpsert;
    case EventType::kHistoryMessages:
      return EventType::kMessagesUpsert;
    case EventType::kHistoryContacts:
      return EventType::kContactsUpsert;
    default:
      assert(false && "not a history type");
      return type;
  }
}

std::string_view HistoryArrayKey(EventType type) {
  switch (type) {
    case EventType::kHistoryChats:
      return "chats";
    case EventType::kHistoryMessages:
      return "messages";
    case EventType::kHistoryContacts:
      return "contacts";
    default:
      assert(false && "not a history type");
      return "";
  }
}

std::string_view ReasonCodeName(ReasonCode code) { return kReasonNames[static_cast<size_t>(code)]; }

std::optional<ReasonCode> ReasonCodeFromName(std::string_view name) {
  for (size_t i = 0; i < kReasonNames.size(); ++i) {
    if (kReasonNames[i] == name) return static_cast<ReasonCode>(i);
  }
  return std::nullopt;
}

std::string_view ErrorClassName(ErrorClass c) {
  return c == ErrorClass::kFatal ? "fatal" : "retryable";
}

std::optional<ErrorClass> ErrorClassFromName(std::string_view name) {
  if (name == "fatal") return ErrorClass::kFatal;
  if (name == "retryable") return ErrorClass::kRetryable;
  return std::nullopt;
}

std::string Failure::Reason() const {
  std::string out(ReasonCodeName(code));
  out += ": ";
  out += message;
  return out;
}

}  // namespace evp
