#pragma once
// Hand-written fakes of the pipeline ports (pipeline/ports.hpp) for unit tests. Small and
// honest: the event store applies last-writer-wins with Version exactly as SPEC §11 says,
// reports "not yet" for updates of missing rows, and keeps everything in memory. Not
// thread-safe: one test, one thread. The EventStore contract (support/store_contract.hpp) runs
// on InMemoryEventStore and on the PostgreSQL store alike, so the two cannot drift apart.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/dead_letter.hpp"
#include "handlers/mutation.hpp"
#include "pipeline/ports.hpp"

namespace evp::testing {

// One stored row: column -> text, plus the version of the last event applied to it.
struct FakeRow {
  std::map<std::string, std::string> columns;
  Version version;
  bool operator==(const FakeRow& o) const { return columns == o.columns && version == o.version; }
};

class InMemoryEventStore final : public pipeline::EventStore {
 public:
  using TableRows = std::map<std::string, FakeRow>;  // KeyText() -> row

  // --- knobs ---
  // Every call fails transiently (database down). Tenants already registered stay known
  // (a real store caches them), so EnsureTenant of a known tenant still succeeds.
  bool fail_transiently = false;
  // Apply reports kFatal (with this message) for mutations of this tenant and key text.
  std::optional<std::pair<std::string, std::string>> fatal_key;
  std::string fatal_message = "23505: duplicate key value violates unique constraint";
  // Apply reports kRetry (a transient error of that mutation alone, e.g. a deadlock) for
  // mutations of this tenant and key text; the database stays reachable.
  std::optional<std::pair<std::string, std::string>> retry_key;
  std::string retry_message = "40P01: deadlock detected";
  // Apply reports kRetry for every mutation of this tenant (its table locked or dropped), or
  // of every tenant (a read-only database) while the database answers.
  std::optional<std::string> retry_tenant;
  bool retry_every_tenant = false;

  // --- EventStore ---
  Result<Unit, pipeline::StoreError> EnsureTenant(const std::string& company_id) override {
    ++ensure_calls;
    if (tenants_.count(company_id)) return Unit{};
    if (fail_transiently) {
      return Err{pipeline::StoreError{pipeline::StoreErrorKind::kTransient, "connection refused"}};
    }
    for (const auto& known : tenants_) {
      if (Lower(known) == Lower(company_id)) {
        return Err{
            pipeline::StoreError{pipeline::StoreErrorKind::kCollision,
                                 "company_id '" + company_id + "' collides with '" + known + "'"}};
      }
    }
    tenants_.insert(company_id);
    return Unit{};
  }

  Result<std::vector<pipeline::ApplyResult>, pipeline::StoreError> Apply(
      std::vector<handlers::Mutation> mutations) override {
    ++apply_calls;
    if (fail_transiently) {
      return Err{
          pipeline::StoreError{pipeline::StoreErrorKind::kTransient, "08006: connection failure"}};
    }
    std::vector<pipeline::ApplyResult> out;
    out.reserve(mutations.size());
    for (const auto& m : mutations) out.push_back(ApplyOne(m));
    return out;
  }

  bool Ping() override { return !fail_transiently; }

  // --- inspection ---
  // Registers a tenant as if an earlier run had created it.
  void AddTenant(const std::string& company_id) { tenants_.insert(company_id); }
  bool HasTenant(const std::string& company_id) const { return tenants_.count(company_id) > 0; }

  const FakeRow* Row(const std::string& company_id, handlers::Table table,
                     const std::string& key_text) const {
    auto t = data_.find(company_id);
    if (t == data_.end()) return nullptr;
    auto tb = t->second.find(table);
    if (tb == t->second.end()) return nullptr;
    auto r = tb->second.find(key_text);
    return r == tb->second.end() ? nullptr : &r->second;
  }
  // Column text of a row, or nullopt when the row or column is missing.
  std::optional<std::string> Column(const std::string& company_id, handlers::Table table,
                                    const std::string& key_text, const std::string& column) const {
    const FakeRow* row = Row(company_id, table, key_text);
    if (row == nullptr) return std::nullopt;
    auto c = row->columns.find(column);
    if (c == row->columns.end()) return std::nullopt;
    return c->second;
  }
  size_t RowCount(const std::string& company_id, handlers::Table table) const {
    auto t = data_.find(company_id);
    if (t == data_.end()) return 0;
    auto tb = t->second.find(table);
    return tb == t->second.end() ? 0 : tb->second.size();
  }
  size_t TotalRows() const {
    size_t n = 0;
    for (const auto& [tenant, tables] : data_) {
      for (const auto& [table, rows] : tables) n += rows.size();
    }
    return n + onboarding_log_.size();
  }
  // (company, agent, phone) of every onboarding_log row.
  std::set<std::tuple<std::string, std::string, std::string>> OnboardingLog() const {
    std::set<std::tuple<std::string, std::string, std::string>> out;
    for (const auto& [row, seq] : onboarding_log_) out.insert(row);
    return out;
  }

  int ensure_calls = 0;
  int apply_calls = 0;

 private:
  static std::string Lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
  }

  pipeline::ApplyResult ApplyOne(const handlers::Mutation& m) {
    const std::string key = m.KeyText();
    if (fatal_key && fatal_key->first == m.company_id && fatal_key->second == key) {
      return {pipeline::ApplyOutcome::kFatal, fatal_message};
    }
    if ((retry_key && retry_key->first == m.company_id && retry_key->second == key) ||
        retry_tenant == m.company_id || retry_every_tenant) {
      return {pipeline::ApplyOutcome::kRetry, retry_message};
    }
    if (!tenants_.count(m.company_id)) {
      // The pipeline must call EnsureTenant first; a real store would fail on the schema.
      return {pipeline::ApplyOutcome::kFatal, "3F000: schema does not exist"};
    }
    // The store onboards before it writes the batch's messages, whatever their outcome.
    if (m.onboarding) Onboard(m);
    TableRows& rows = data_[m.company_id][m.table];
    auto it = rows.find(key);
    if (it == rows.end()) {
      if (m.kind == handlers::WriteKind::kUpdate) {
        return {pipeline::ApplyOutcome::kNotYet, key};
      }
      FakeRow row;
      row.version = m.version;
      for (const auto& v : m.values) row.columns[std::string(v.column->name)] = v.text;
      rows.emplace(key, std::move(row));
      if (m.table == handlers::Table::kContacts) NoteContactWrite(m, key, /*first=*/false);
      return {pipeline::ApplyOutcome::kApplied, ""};
    }
    FakeRow& row = it->second;
    // Last writer wins (SPEC §11): an event older than the row's version never overwrites it,
    // with one exception for contacts (FirstInStreamOrder).
    const bool newer = !(m.version < row.version);
    const bool first = FirstInStreamOrder(m, key);
    if (!newer && !first) {
      if (m.table == handlers::Table::kContacts) NoteContactWrite(m, key, false);
      return {pipeline::ApplyOutcome::kStale, ""};
    }
    ContactHistory* history =
        m.table == handlers::Table::kContacts ? &contact_history_[{m.company_id, key}] : nullptr;
    if (first) {
      // In stream order the onboarding never happened: what only it wrote goes.
      for (const std::string& column : history->onboarded) row.columns.erase(column);
    }
    for (const auto& v : m.values) {
      const std::string column(v.column->name);
      if (newer || !row.columns.count(column)) row.columns[column] = v.text;
    }
    if (newer) row.version = m.version;
    if (m.table == handlers::Table::kContacts) NoteContactWrite(m, key, first);
    return {pipeline::ApplyOutcome::kApplied, ""};
  }

  // Onboarding in stream order, as the PostgreSQL store does it (SetWriter::OnboardingSql):
  // the first inbound message from an unknown (agent, phone) creates the contact with the
  // lowest version (any contact event overrides it) and one log row; an inbound message that
  // comes earlier in the stream than the one that onboarded the contact, and than the
  // contact's first realtime contacts.upsert, takes the onboarding over.
  struct ContactHistory {
    std::optional<uint64_t> onboard_seq;       // the message that onboarded it
    std::optional<uint64_t> first_upsert_seq;  // its first realtime upsert; 0: a history import
    std::set<std::string> onboarded;           // columns still holding what onboarding wrote
    // An event of stream sequence `seq` comes before both the onboarding message and the
    // first realtime upsert (either may be missing).
    bool Precedes(uint64_t seq) const {
      return (!first_upsert_seq || *first_upsert_seq > seq) && (!onboard_seq || *onboard_seq > seq);
    }
  };

  void Onboard(const handlers::Mutation& m) {
    const auto& ob = *m.onboarding;
    const uint64_t seq = m.version.seq;
    const std::string key = "agent_id=" + ob.agent_id + ",phone_number=" + ob.phone_number;
    TableRows& contacts = data_[m.company_id][handlers::Table::kContacts];
    ContactHistory& history = contact_history_[{m.company_id, key}];
    auto it = contacts.find(key);
    if (it != contacts.end() && !history.Precedes(seq)) {
      return;  // the contact existed before this message in stream order
    }
    if (it == contacts.end()) {
      FakeRow row;
      row.version = Version{0, Source::kHistory, 0};
      row.columns = {{"agent_id", ob.agent_id},
                     {"phone_number", ob.phone_number},
                     {"company_id", m.company_id}};
      it = contacts.emplace(key, std::move(row)).first;
    }
    // text[] columns hold their JSON text here, as contacts.upsert rows do (ToText).
    const std::string tags = nlohmann::json(ob.tags).dump();
    const std::pair<const char*, const std::string*> values[] = {{"chat_id", &ob.chat_id},
                                                                 {"origin", &ob.origin},
                                                                 {"tags", &tags},
                                                                 {"assigned_to", &ob.assigned_to}};
    for (const auto& [column, value] : values) {
      if (history.onboarded.count(column) == 0 && it->second.columns.count(column)) continue;
      if (value->empty()) {
        if (history.onboarded.erase(column)) it->second.columns.erase(column);
        continue;
      }
      it->second.columns[column] = *value;
      history.onboarded.insert(column);
    }
    history.onboard_seq = seq;
    onboarding_log_[{m.company_id, ob.agent_id, ob.phone_number}] = seq;
  }

  // A realtime contacts.upsert that comes before the message that onboarded the contact and
  // before any other realtime upsert of it: in stream order it created the contact, so it
  // applies even under a newer version, over what only onboarding wrote.
  bool FirstInStreamOrder(const handlers::Mutation& m, const std::string& key) const {
    if (m.table != handlers::Table::kContacts || m.kind != handlers::WriteKind::kUpsert ||
        m.version.source != Source::kRealtime) {
      return false;
    }
    auto h = contact_history_.find({m.company_id, key});
    if (h == contact_history_.end()) return false;
    return h->second.onboard_seq && h->second.Precedes(m.version.seq);
  }

  // Bookkeeping after a contacts write (applied or stale): columns a contact event wrote no
  // longer hold onboarding values; a realtime upsert earlier than the onboarding message
  // means the onboarding never happened, so its log row goes.
  void NoteContactWrite(const handlers::Mutation& m, const std::string& key, bool first) {
    ContactHistory& history = contact_history_[{m.company_id, key}];
    if (first) {
      history.onboarded.clear();
    } else {
      for (const auto& v : m.values) history.onboarded.erase(std::string(v.column->name));
    }
    if (m.kind != handlers::WriteKind::kUpsert) return;
    const uint64_t seq = m.version.source == Source::kRealtime ? m.version.seq : 0;
    if (!history.first_upsert_seq || *history.first_upsert_seq > seq) {
      history.first_upsert_seq = seq;
    }
    if (history.onboard_seq && *history.onboard_seq > seq) {
      history.onboard_seq.reset();
      const FakeRow& row = data_[m.company_id][handlers::Table::kContacts].at(key);
      onboarding_log_.erase(
          {m.company_id, row.columns.at("agent_id"), row.columns.at("phone_number")});
    }
  }

  std::set<std::string> tenants_;
  std::map<std::string, std::map<handlers::Table, TableRows>> data_;
  std::map<std::pair<std::string, std::string>, ContactHistory> contact_history_;
  // (company, agent, phone) -> stream sequence of the message the row names
  std::map<std::tuple<std::string, std::string, std::string>, uint64_t> onboarding_log_;
};

// Records every dead letter it is asked to publish.
class RecordingDeadLetterSink final : public pipeline::DeadLetterSink {
 public:
  explicit RecordingDeadLetterSink(size_t max_payload = 1024 * 1024) : max_payload_(max_payload) {}

  bool fail = false;                        // Publish fails (NATS unavailable, no PubAck)
  std::string fail_when_original_contains;  // only these fail (when not empty)
  std::vector<DeadLetter> published;
  int publish_calls = 0;
  std::vector<size_t> publish_all_sizes;  // letters per PublishAll call

  Result<Unit, std::string> Publish(const DeadLetter& letter) override {
    ++publish_calls;
    if (fail || (!fail_when_original_contains.empty() &&
                 letter.original.find(fail_when_original_contains) != std::string::npos)) {
      return Err{std::string("nats: timeout waiting for PubAck")};
    }
    published.push_back(letter);
    return Unit{};
  }
  std::vector<Result<Unit, std::string>> PublishAll(std::span<const DeadLetter> letters) override {
    publish_all_sizes.push_back(letters.size());
    return DeadLetterSink::PublishAll(letters);
  }
  size_t MaxPayload() const override { return max_payload_; }

 private:
  size_t max_payload_;
};

// exhausted_events in memory, unique on DeadLetter::IdempotencyKey().
class InMemoryExhaustedStore final : public pipeline::ExhaustedStore {
 public:
  struct Row {
    DeadLetter letter;
    std::string reason;  // final reason
  };

  bool fail_transiently = false;
  int calls = 0;    // RecordExhausted
  int lookups = 0;  // IsRecorded

  Result<bool, pipeline::StoreError> RecordExhausted(const DeadLetter& letter,
                                                     const std::string& final_reason) override {
    ++calls;
    if (fail_transiently) {
      return Err{pipeline::StoreError{pipeline::StoreErrorKind::kTransient,
                                      "57P01: terminating connection"}};
    }
    auto [it, inserted] = rows_.try_emplace(letter.IdempotencyKey(), Row{letter, final_reason});
    if (inserted) order_.push_back(it->first);
    return inserted;
  }

  Result<bool, pipeline::StoreError> IsRecorded(const std::string& idempotency_key) override {
    ++lookups;
    if (fail_transiently) {
      return Err{pipeline::StoreError{pipeline::StoreErrorKind::kTransient,
                                      "57P01: terminating connection"}};
    }
    return rows_.contains(idempotency_key);
  }

  size_t size() const { return rows_.size(); }
  // Rows in insertion order.
  std::vector<Row> Rows() const {
    std::vector<Row> out;
    for (const auto& k : order_) out.push_back(rows_.at(k));
    return out;
  }

 private:
  std::map<std::string, Row> rows_;
  std::vector<std::string> order_;
};

// Time that moves only when the test says so.
class FakeClock final : public pipeline::Clock {
 public:
  explicit FakeClock(int64_t unix_ms = 1'700'000'000'000) : unix_ms_(unix_ms) {}

  std::chrono::steady_clock::time_point Now() override { return steady_; }
  int64_t UnixMillis() override { return unix_ms_; }

  void Advance(std::chrono::milliseconds d) {
    steady_ += d;
    unix_ms_ += d.count();
  }

 private:
  std::chrono::steady_clock::time_point steady_{std::chrono::hours(1000)};
  int64_t unix_ms_;
};

}  // namespace evp::testing
