#pragma once
// Handlers turn a validated event into row changes (Mutation) for the tenant's tables. Pure:
// no I/O, thread-safe. Column names come only from the fixed tables below, never from input.
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/event.hpp"

namespace evp::handlers {

enum class Table { kChats, kMessages, kContacts, kAgents };
enum class ColumnType { kText, kBigint, kBool, kJsonb, kTextArray };
// kUpsert inserts or overwrites the fields it carries; kUpdate needs the row to exist
// ("not yet" otherwise) and changes only the fields it carries.
enum class WriteKind { kUpsert, kUpdate };

struct Column {
  std::string_view name;
  ColumnType type;
};

struct TableDef {
  Table table;
  std::string_view name;
  std::span<const Column> columns;  // key columns first
  size_t key_count;
};
const TableDef& Definition(Table table);

// Text form of a value as sent to PostgreSQL: bigint as decimal, bool as true/false,
// jsonb and text[] as JSON text.
struct Value {
  const Column* column;
  std::string text;
};

struct Onboarding {
  std::string agent_id;
  std::string phone_number;
  std::string chat_id;  // may be empty
  std::string message_id;
  std::string origin;
  std::vector<std::string> tags;
  std::string assigned_to;  // may be empty
};

struct Mutation {
  Table table;
  WriteKind kind;
  std::string company_id;
  Version version;
  std::vector<Value> values;  // key columns first, in TableDef order; company_id included
  std::optional<Onboarding> onboarding;
  std::string KeyText() const;  // "chat_id=c1" for logs and collapsing
};

// Version of an event (SPEC §11): explicit time field when present, else publish time.
Version EventVersion(EventType type, const nlohmann::json& doc, int64_t publish_seconds,
                     Source source, uint64_t stream_seq);

// Row change of one schema-valid realtime event or history item (item types are the
// upsert types). Onboarding is attached only to realtime messages.upsert with flow=IN.
// `text` is the exact JSON text of `doc` when known (else empty): a free-form object holding a
// number that is not an integer is then stored as sent, not as the parser's double (which
// rounds 0.1000000000000000055 or 123456789012345678901234567890).
Mutation BuildMutation(EventType type, const nlohmann::json& doc, const std::string& company_id,
                       const Version& version, std::string_view text = {});

// True when BuildMutation would want the exact text of `doc`: one of its free-form objects
// holds a number that is not an integer.
bool NeedsExactText(EventType type, const nlohmann::json& doc);

}  // namespace evp::handlers
