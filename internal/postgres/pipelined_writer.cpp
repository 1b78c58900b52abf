#include "postgres/pipelined_writer.hpp"

#include <libpq-fe.h>

#include <algorithm>
#include <cstdlib>
#include <unordered_set>

#include "postgres/pg_errors.hpp"

namespace evp::postgres {

using pipeline::ApplyResult;

namespace {

// A statement's result rows, read in place.
class PgResultRows final : public ResultRows {
 public:
  explicit PgResultRows(const PGresult* r) : r_(r) {}
  size_t Size() const override { return static_cast<size_t>(PQntuples(r_)); }
  size_t Columns() const override { return static_cast<size_t>(PQnfields(r_)); }
  std::string_view Value(size_t row, size_t col) const override {
    const int i = static_cast<int>(row);
    const int j = static_cast<int>(col);
    return {PQgetvalue(r_, i, j), static_cast<size_t>(PQgetlength(r_, i, j))};
  }

 private:
  const PGresult* r_;
};

std::string ErrorText(PGconn* conn, const PGresult* res) {
  const std::string text =
      PrimaryErrorMessage(res != nullptr ? PQresultErrorMessage(res) : PQerrorMessage(conn));
  const char* state = res != nullptr ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
  return state != nullptr ? "SQLSTATE " + std::string(state) + ": " + text : text;
}

// Records a failed statement in `outcome`: its error and SQLSTATE, and the tenant schema of
// its step (`schema`, null for BEGIN and COMMIT). Only a statement failure blames a tenant:
// a lost connection is nobody's fault.
void NoteFailure(PipelinedWriter::Outcome& outcome, PipelinedWriter::Failure failure, PGconn* conn,
                 const PGresult* r, const std::string* schema) {
  outcome.failure = failure;
  outcome.message = ErrorText(conn, r);
  const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  outcome.sqlstate = state != nullptr ? state : "";
  if (failure == PipelinedWriter::Failure::kStatement && schema != nullptr) {
    outcome.failed_schema = *schema;
  }
}

}  // namespace

std::string SessionSettings(std::chrono::milliseconds lock_timeout) {
  return "SET plan_cache_mode = force_generic_plan; SET enable_hashjoin = off; "
         "SET enable_mergejoin = off; SET lock_timeout = " +
         std::to_string(lock_timeout.count());
}

PipelinedWriter::PipelinedWriter(std::string dsn, std::string ops_schema, std::string tenant_prefix,
                                 size_t statement_cache, std::chrono::milliseconds lock_timeout)
    : dsn_(std::move(dsn)),
      ops_schema_(ops_schema),
      planner_(std::move(tenant_prefix), std::move(ops_schema)),
      statement_cache_(std::max<size_t>(1, statement_cache)),
      lock_timeout_(lock_timeout) {}

PipelinedWriter::~PipelinedWriter() { Close(); }

void PipelinedWriter::Close() {
  if (conn_ != nullptr) PQfinish(conn_);
  conn_ = nullptr;
  prepared_.clear();
  lru_.clear();
}

bool PipelinedWriter::Connect(std::string& error) {
  if (conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK &&
      PQtransactionStatus(conn_) == PQTRANS_IDLE && !ServerSpokeWhileIdle(PQsocket(conn_))) {
    return true;
  }
  Close();
  conn_ = PQconnectdb(dsn_.c_str());
  if (PQstatus(conn_) != CONNECTION_OK) {
    error = ErrorText(conn_, nullptr);
    Close();
    return false;
  }
  // The same session settings as the sequential writer (see PgStore): generic plans, index
  // joins for the few rows each statement carries, and a bounded wait for locks.
  PGresult* r = PQexec(conn_, SessionSettings(lock_timeout_).c_str());
  bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  if (!ok) error = ErrorText(conn_, r);
  PQclear(r);
  ok = ok && LoadRowTypes(error);
  if (!ok) Close();
  return ok;
}

bool PipelinedWriter::LoadRowTypes(std::string& error) {
  // The statements' parameters name their row type by oid. A type missing or differing from
  // what this version sends (ops migrations not run, or run by another version) fails the
  // connection with this error: nothing is written here, and the store writes the batch
  // event by event instead (slow, but nothing is lost or exhausted; see docs/operations.md).
  const char* sql =
      "SELECT t.typname, t.oid, string_agg(a.attname || ' ' || format_type(a.atttypid, "
      "a.atttypmod), ', ' ORDER BY a.attnum) FROM pg_type t JOIN pg_namespace n ON n.oid = "
      "t.typnamespace JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT "
      "a.attisdropped WHERE n.nspname = $1 AND t.typname LIKE 'rows\\_%' GROUP BY t.typname, "
      "t.oid";
  const char* params[] = {ops_schema_.c_str()};
  PGresult* r = PQexecParams(conn_, sql, 1, nullptr, params, nullptr, nullptr, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    error = ErrorText(conn_, r);
    PQclear(r);
    return false;
  }
  SetWriter::RowTypes oids{};
  for (size_t type = 0; type < SetWriter::kRowTypeCount; ++type) {
    const std::string name = SetWriter::RowTypeName(type);
    const std::string expected = SetWriter::RowTypeColumns(type);
    std::string found;
    for (int row = 0; row < PQntuples(r); ++row) {
      if (name == PQgetvalue(r, row, 0)) {
        oids[type] = static_cast<uint32_t>(std::strtoul(PQgetvalue(r, row, 1), nullptr, 10));
        found = PQgetvalue(r, row, 2);
      }
    }
    if (found != expected) {
      error = "type " + ops_schema_ + "." + name +
              (found.empty() ? " does not exist" : " is (" + found + ")") +
              ", this version needs (" + expected + "): run the ops migrations of this version";
      PQclear(r);
      return false;
    }
  }
  PQclear(r);
  planner_.SetRowTypes(oids);
  return true;
}

bool PipelinedWriter::Exchange(const std::vector<const WriteStep*>& steps, bool begin, bool commit,
                               Outcome& outcome) {
  if (PQenterPipelineMode(conn_) != 1) return false;
  bool sent =
      !begin || PQsendQueryParams(conn_, "BEGIN", 0, nullptr, nullptr, nullptr, nullptr, 0) == 1;
  for (const WriteStep* step : steps) {
    if (!sent) break;
    std::vector<const char*> values;
    std::vector<int> lengths;
    values.reserve(step->params.size());
    for (const std::string& param : step->params) {
      values.push_back(param.data());
      lengths.push_back(static_cast<int>(param.size()));
    }
    const std::vector<int> formats(step->params.size(), step->binary ? 1 : 0);
    sent = PQsendQueryPrepared(conn_, planner_.StatementName(*step).c_str(),
                               static_cast<int>(values.size()), values.data(), lengths.data(),
                               formats.data(), 0) == 1;
  }
  if (commit) {
    sent =
        sent && PQsendQueryParams(conn_, "COMMIT", 0, nullptr, nullptr, nullptr, nullptr, 0) == 1;
  }
  sent = sent && PQpipelineSync(conn_) == 1;
  if (!sent) return false;

  // Results arrive in the order sent: BEGIN, the steps, COMMIT, then the sync point. After a
  // failed statement the rest are reported aborted.
  const size_t first = begin ? 1 : 0;  // query number of the first step
  const size_t queries = first + steps.size() + (commit ? 1 : 0);
  size_t query = 0;
  bool synced = false;
  while (!synced) {
    PGresult* r = PQgetResult(conn_);
    if (r == nullptr) {
      // End of one query's results; more ends than queries means the stream is broken.
      if (PQstatus(conn_) != CONNECTION_OK || ++query > queries) return false;
      continue;
    }
    const ExecStatusType status = PQresultStatus(r);
    if (status == PGRES_PIPELINE_SYNC) {
      synced = true;
    } else if (status == PGRES_FATAL_ERROR || status == PGRES_NONFATAL_ERROR) {
      if (outcome.failure == Failure::kNone) {
        const bool step = query >= first && query < first + steps.size();
        NoteFailure(outcome, Failure::kStatement, conn_, r,
                    step ? &steps[query - first]->schema : nullptr);
      }
    } else if (status == PGRES_TUPLES_OK && query >= first && query < first + steps.size() &&
               outcome.failure == Failure::kNone) {
      SetWriter::Interpret(*steps[query - first], PgResultRows(r), outcome.results);
    }
    PQclear(r);
  }
  PQexitPipelineMode(conn_);
  return PQstatus(conn_) == CONNECTION_OK;
}

bool PipelinedWriter::PrepareStatements(const std::vector<const WriteStep*>& steps, bool evict,
                                        Outcome& outcome) {
  std::vector<std::pair<std::string, const WriteStep*>> missing;
  std::unordered_set<std::string> seen;
  size_t used = 0;  // statements of this batch already prepared (now at the front)
  for (const WriteStep* step : steps) {
    std::string name = planner_.StatementName(*step);
    if (!seen.insert(name).second) continue;
    if (auto it = prepared_.find(name); it != prepared_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);  // used again: most recent
      ++used;
    } else {
      missing.emplace_back(std::move(name), step);
    }
  }
  // Room for this batch's statements: the least recently used others go, in one round trip.
  // A batch needing more than the cache holds keeps all of its own until the next batch.
  std::string deallocate;
  while (evict && lru_.size() > used && prepared_.size() + missing.size() > statement_cache_) {
    deallocate += "DEALLOCATE " + lru_.back() + ";";
    prepared_.erase(lru_.back());
    lru_.pop_back();
  }
  if (!deallocate.empty()) {
    PGresult* r = PQexec(conn_, deallocate.c_str());
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
      // Which statements are left is unknown: a new connection has none, so all of this
      // batch's are prepared there.
      Close();
      if (!Connect(outcome.message)) {
        outcome.failure = Failure::kConnection;
        return false;
      }
      return PrepareStatements(steps, false, outcome);
    }
  }
  for (const auto& [name, step] : missing) {
    PGresult* r = PQprepare(conn_, name.c_str(), planner_.StepSql(*step).c_str(), 0, nullptr);
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
      NoteFailure(outcome,
                  PQstatus(conn_) == CONNECTION_OK ? Failure::kStatement : Failure::kConnection,
                  conn_, r, &step->schema);
    }
    PQclear(r);
    if (!ok) return false;
    lru_.push_front(name);
    prepared_.emplace(name, lru_.begin());
  }
  return true;
}

PipelinedWriter::Outcome PipelinedWriter::Write(std::span<const handlers::Mutation> mutations) {
  Outcome outcome;
  if (!Connect(outcome.message)) {
    outcome.failure = Failure::kConnection;
    return outcome;
  }
  const std::vector<WriteStep> steps = planner_.Plan(mutations, outcome.results);
  auto lost = [&](Outcome& o) {
    o.failure = Failure::kConnection;
    o.message = "connection lost: " + ErrorText(conn_, nullptr);
    o.failed_schema.clear();  // a statement may have failed before: the loss decides
    Close();
    return o;
  };
  // One exchange: BEGIN, the writes and COMMIT. Then, only for updates that did not apply
  // (usually none), their stale checks in a second one. A check reads the latest committed
  // version of its row whether it runs before or after the COMMIT (each statement of a read
  // committed transaction takes a new snapshot, and versions only move forward), so it
  // comes after: the usual write costs one round trip, not two.
  std::vector<const WriteStep*> writes;
  std::vector<const WriteStep*> checks;
  for (const WriteStep& step : steps) (step.op == 'x' ? checks : writes).push_back(&step);
  // Statements are prepared once per connection, before they are sent; a check only when it
  // is needed. Evicting is only done before the transaction: it may reconnect.
  if (!PrepareStatements(writes, true, outcome)) return outcome;
  if (!Exchange(writes, true, true, outcome)) return lost(outcome);
  if (outcome.failure != Failure::kNone || PQtransactionStatus(conn_) != PQTRANS_IDLE) {
    // An aborted transaction block stays open after the sync: end it.
    PQclear(PQexec(conn_, "ROLLBACK"));
    if (outcome.failure == Failure::kNone) {
      outcome.failure = Failure::kStatement;
      outcome.message = "transaction did not commit";
    }
    outcome.results.clear();
    return outcome;
  }
  std::vector<const WriteStep*> needed;
  for (const WriteStep* check : checks) {
    if (SetWriter::Needed(*check, outcome.results)) needed.push_back(check);
  }
  if (needed.empty()) return outcome;
  // Committed: a check that cannot run leaves its updates "not yet", to be retried (where
  // they apply, or prove stale), never dropped; the other outcomes stand.
  Outcome checked;
  checked.results = outcome.results;
  if (!PrepareStatements(needed, false, checked) || !Exchange(needed, false, false, checked)) {
    if (PQstatus(conn_) != CONNECTION_OK) Close();
    return outcome;
  }
  if (checked.failure == Failure::kNone) outcome.results = std::move(checked.results);
  return outcome;
}

}  // namespace evp::postgres
