#pragma once
// Set-based writes: all mutations of one batch in a few statements per (tenant, table, kind),
// each statement taking its rows as one binary array of the table's row type (unnest), with the
// same version guard as the row-at-a-time path. Several events for one key in a batch are written
// in rounds (the k-th event of every key in round k, in fetch order), because ON CONFLICT
// cannot touch a row twice in one statement; the result equals applying them one by one.
// Not thread-safe (one per connection).
#include <array>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "handlers/mutation.hpp"
#include "pipeline/ports.hpp"

namespace evp::postgres {

// A double-quoted SQL identifier (quotes inside doubled).
std::string QuoteIdent(std::string_view name);

// One statement of a batch write: its target, its parameters (the rows as one binary array of
// their row type; for 'o' also $2, the tenant) and what its result rows mean.
struct WriteStep {
  std::string schema;
  const handlers::TableDef* def = nullptr;  // null for onboarding
  // 'u' upsert, 'p' update, 'x' stale check of updates; onboarding: 'o' contacts created or
  // taken over, 'c' first realtime contacts.upsert of each contact
  char op = 'u';
  std::vector<std::string> params;
  std::unordered_map<std::string, size_t> upsert_by_key;  // 'u': key text -> mutation index
  std::vector<size_t> indices;                            // 'p', 'x': the updates' mutation indices
  bool binary = false;  // params in binary format (always, in a plan), else text
};

// The rows a statement returned, each value as text.
class ResultRows {
 public:
  virtual ~ResultRows() = default;
  virtual size_t Size() const = 0;
  virtual size_t Columns() const = 0;
  virtual std::string_view Value(size_t row, size_t col) const = 0;
};

class SetWriter {
 public:
  // `ops_schema` holds the row types of the statements' parameters (ops migration 0003).
  SetWriter(std::string tenant_prefix, std::string ops_schema)
      : tenant_prefix_(std::move(tenant_prefix)), ops_schema_(std::move(ops_schema)) {}

  // The row types of the statements' parameters (ops migrations 0003 and 0004): one per
  // table, indexed by handlers::Table, then the onboarding messages ('o') and the first
  // realtime contacts.upserts ('c'). Binary parameters name their type by oid.
  static constexpr size_t kOnboardingRows = 4;
  static constexpr size_t kFirstUpsertRows = 5;
  static constexpr size_t kRowTypeCount = 6;
  using RowTypes = std::array<uint32_t, kRowTypeCount>;
  void SetRowTypes(const RowTypes& oids) { row_types_ = oids; }
  // The name of row type `type` ("rows_messages"), and its columns as "name type, ..." with
  // PostgreSQL's type names (format_type), which the writer checks when it connects.
  static std::string RowTypeName(size_t type);
  static std::string RowTypeColumns(size_t type);

  // The statements of a batch, in order, and each mutation's outcome before any of them ran
  // (upserts stale, updates not yet); Interpret moves outcomes forward from result rows.
  std::vector<WriteStep> Plan(std::span<const handlers::Mutation> mutations,
                              std::vector<pipeline::ApplyResult>& out) const;
  static void Interpret(const WriteStep& step, const ResultRows& rows,
                        std::vector<pipeline::ApplyResult>& out);
  // False for a stale check whose updates all applied (a sequential writer may skip it).
  static bool Needed(const WriteStep& step, const std::vector<pipeline::ApplyResult>& out);
  std::string StepSql(const WriteStep& step) const;

  // Onboarding in stream order (tenant migration 0002), shared with the row-at-a-time path.
  // 'o' creates unknown contacts or takes known ones over, with $1 the onboarding messages and
  // $2 the tenant; 'c' runs after the contacts.upsert rows are written, with $1 the first
  // realtime upserts. `schema` is quoted. `array_type` is the quoted row type of a binary
  // array parameter (OnboardingRows, FirstUpsertRows); empty, $1 is a jsonb array of
  // AppendOnboarding or AppendContactSeq records instead.
  static std::string OnboardingSql(char op, const std::string& schema,
                                   const std::string& array_type = "");
  // ON CONFLICT clause of a contacts.upsert (EXCLUDED the new row, cur the stored one):
  // the version guard, except for an upsert that comes before the contact's onboarding in
  // the stream, which replaces what only onboarding wrote.
  static std::string ContactsUpsertConflict();
  // contacts.onboarded_cols bits of the columns a contacts.update carries.
  static int OnboardedBits(const handlers::Mutation& m);
  static void AppendOnboarding(std::string& array, const handlers::Mutation& m);
  static void AppendContactSeq(std::string& array, const handlers::Mutation& m);
  // True for a realtime contacts.upsert: the 'c' statement must see it.
  static bool MarksFirstUpsert(const handlers::Mutation& m);
  // Stable prepared-statement name of the step's (schema, table, op).
  std::string StatementName(const WriteStep& step);

 private:
  std::string RowTypeRef(size_t type) const;  // quoted, schema-qualified
  void PlanGroup(std::span<const handlers::Mutation> all, const std::vector<size_t>& indices,
                 std::vector<pipeline::ApplyResult>& out, std::vector<WriteStep>& steps) const;

  std::string tenant_prefix_;
  std::string ops_schema_;
  RowTypes row_types_{};
  std::map<std::string, std::string> names_;  // (schema, table, op) -> statement name
};

}  // namespace evp::postgres
