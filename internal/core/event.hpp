#pragma once
// The vocabulary shared by every module: event types, failure reasons and error classes.
// No third-party dependencies.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace evp {

enum class EventType {
  kChatsUpsert,
  kChatsUpdate,
  kMessagesUpsert,
  kMessagesUpdate,
  kContactsUpsert,
  kContactsUpdate,
  kConnectionUpdate,
  kHistoryChats,
  kHistoryMessages,
  kHistoryContacts,
};

inline constexpr std::array<EventType, 10> kAllEventTypes = {
    EventType::kChatsUpsert,      EventType::kChatsUpdate,    EventType::kMessagesUpsert,
    EventType::kMessagesUpdate,   EventType::kContactsUpsert, EventType::kContactsUpdate,
    EventType::kConnectionUpdate, EventType::kHistoryChats,   EventType::kHistoryMessages,
    EventType::kHistoryContacts,
};

// "chats.upsert", "history.chats", ...: the schema file stem and the subject's middle tokens.
std::string_view EventTypeName(EventType type);
std::optional<EventType> EventTypeFromName(std::string_view name);
bool IsHistory(EventType type);
// For history types: the upsert type every array item must satisfy, and the array's key.
EventType HistoryItemType(EventType type);
std::string_view HistoryArrayKey(EventType type);

// What a tenant id (company_id) must match (SPEC §4), as the JSON Schemas spell it.
inline constexpr std::string_view kTenantIdPattern = "^[A-Za-z][A-Za-z0-9_]{0,39}$";

// Stable machine codes of SPEC §10; an exhausted row's reason is "<code>: <message>".
enum class ReasonCode {
  kMalformedJson,
  kSchemaViolation,
  kInvalidTenant,
  kTenantMismatch,
  kUnknownType,
  kTooLarge,
  kNotFoundAfterGrace,
  kConstraintViolation,
  kRetriesExhausted,
};
inline constexpr std::array<ReasonCode, 9> kAllReasonCodes = {
    ReasonCode::kMalformedJson,      ReasonCode::kSchemaViolation,
    ReasonCode::kInvalidTenant,      ReasonCode::kTenantMismatch,
    ReasonCode::kUnknownType,        ReasonCode::kTooLarge,
    ReasonCode::kNotFoundAfterGrace, ReasonCode::kConstraintViolation,
    ReasonCode::kRetriesExhausted,
};
std::string_view ReasonCodeName(ReasonCode code);
std::optional<ReasonCode> ReasonCodeFromName(std::string_view name);

enum class ErrorClass { kFatal, kRetryable };
std::string_view ErrorClassName(ErrorClass c);
std::optional<ErrorClass> ErrorClassFromName(std::string_view name);

// A failure that sends an event to the dead-letter queue.
struct Failure {
  ReasonCode code;
  std::string message;
  std::string Reason() const;  // "schema_violation: /chat_id: is required"
};

// Which stream an event came from; breaks version ties (SPEC §11: realtime beats history).
enum class Source : int16_t { kHistory = 0, kRealtime = 1 };

// Version of an event, compared as (seconds, source rank, stream sequence). Within one
// stream, ties on seconds fall to the stream sequence; across streams, realtime wins.
struct Version {
  int64_t seconds = 0;
  Source source = Source::kRealtime;
  uint64_t seq = 0;
  // clang-tidy 14 mistakes the defaulted comparison's literal 0 for a null pointer.
  auto operator<=>(const Version&) const = default;  // NOLINT(modernize-use-nullptr)
};

}  // namespace evp
