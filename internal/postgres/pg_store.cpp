#include "postgres/pg_store.hpp"

#include <unistd.h>

#include <algorithm>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <pqxx/pqxx>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "core/embedded.hpp"
#include "core/text.hpp"
#include "observability/logging.hpp"
#include "pipeline/error_policy.hpp"
#include "postgres/pg_errors.hpp"
#include "postgres/set_writer.hpp"
#include "routing/subject.hpp"

namespace evp::postgres {

using handlers::ColumnType;
using handlers::Mutation;
using handlers::WriteKind;
using pipeline::ApplyOutcome;
using pipeline::ApplyResult;
using pipeline::StoreError;
using pipeline::StoreErrorKind;

namespace {

struct Migration {
  int version;
  std::string_view name;
  std::string_view sql;
};

// Embedded migrations of one folder ("ops" or "tenant"), ordered by their numeric prefix.
std::vector<Migration> Migrations(std::string_view folder) {
  std::vector<Migration> out;
  for (const EmbeddedFile& f : EmbeddedMigrations()) {
    if (!f.path.starts_with(std::string(folder) + "/")) continue;
    std::string_view name = f.path.substr(folder.size() + 1);
    out.push_back({std::stoi(std::string(name.substr(0, name.find('_')))), name, f.content});
  }
  std::sort(out.begin(), out.end(),
            [](const Migration& a, const Migration& b) { return a.version < b.version; });
  return out;
}

int LatestTenantVersion() {
  auto m = Migrations("tenant");
  return m.empty() ? 0 : m.back().version;
}

std::string Cast(ColumnType t, const std::string& param) {
  switch (t) {
    case ColumnType::kText:
      return param + "::text";
    case ColumnType::kBigint:
      return param + "::bigint";
    case ColumnType::kBool:
      return param + "::boolean";
    case ColumnType::kJsonb:
      return param + "::jsonb";
    case ColumnType::kTextArray:
      return "ARRAY(SELECT jsonb_array_elements_text(" + param + "::jsonb))";
  }
  return param;
}

std::string Quoted(std::string_view name) { return "\"" + std::string(name) + "\""; }

std::string MetadataJson(const DeadLetter& dl) {
  // Everything the DLQ message carried besides its body (SPEC §7), so that a row explains
  // itself without its columns: subject, tenant, class, reason, attempts, failure times.
  nlohmann::json meta = {
      {"subject", SafeUtf8(dl.source_subject)},
      {"company_id", SafeUtf8(dl.company_id)},
      {"error_class", std::string(ErrorClassName(dl.error_class))},
      {"reason", SafeUtf8(dl.reason)},
      {"attempts", dl.attempts},
      {"first_failed_ms", dl.first_failed_ms},
      {"last_failed_ms", dl.last_failed_ms},
      {"source_stream", SafeUtf8(dl.source_stream)},
      {"stream_seq", dl.stream_seq},
      {"published_ns", dl.published_ns},
      {"orig_msg_id", SafeUtf8(dl.orig_msg_id)},
      {"dlq_msg_id", SafeUtf8(dl.DlqMsgId())},
      {"payload_bytes", dl.original.size()},
      {"payload_valid_utf8", IsValidUtf8(dl.original)},
  };
  if (dl.item_index) meta["item_index"] = *dl.item_index;
  if (!dl.trace_id.empty()) meta["trace_id"] = SafeUtf8(dl.trace_id);
  std::string out = meta.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  // jsonb refuses \u0000; SafeUtf8 already removed NULs, this is belt and braces.
  return out;
}

}  // namespace

std::string TenantSchemaName(const std::string& prefix, const std::string& company_id) {
  return prefix + LowerAscii(company_id);
}

Result<int, std::string> MigrateOps(const std::string& dsn, const std::string& ops_schema) {
  try {
    pqxx::connection conn(dsn);
    pqxx::work tx(conn);
    const std::string schema = tx.quote_name(ops_schema);
    tx.exec("SELECT pg_advisory_xact_lock(hashtext('evp-migrate:' || " + tx.quote(ops_schema) +
            "))");
    tx.exec0("CREATE SCHEMA IF NOT EXISTS " + schema);
    tx.exec0("SET LOCAL search_path TO " + schema);
    tx.exec0(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text "
        "NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())");
    int applied = 0;
    for (const Migration& m : Migrations("ops")) {
      auto done = tx.exec_params("SELECT 1 FROM schema_migrations WHERE version = $1", m.version);
      if (!done.empty()) continue;
      ++applied;
      tx.exec0(std::string(m.sql));
      tx.exec_params0("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version,
                      std::string(m.name));
      observability::LogInfo("applied ops migration",
                             {{"schema", ops_schema}, {"migration", m.name}});
    }
    tx.commit();
    return applied;
  } catch (const std::exception& e) {
    return Err{std::string("migrating schema ") + ops_schema + ": " + e.what()};
  }
}

Result<TenantRepair, std::string> RepairTenantTables(const std::string& dsn,
                                                     const std::string& schema_name) {
  try {
    pqxx::connection conn(dsn);
    pqxx::work tx(conn);
    // The lock EnsureTenant takes: no schema creation or upgrade runs meanwhile.
    tx.exec_params("SELECT pg_advisory_xact_lock(hashtext('evp-tenant:' || $1))", schema_name);
    const std::string scratch_name = "evp_repair_" + std::to_string(getpid());
    const std::string scratch = tx.quote_name(scratch_name);
    const std::string schema = tx.quote_name(schema_name);
    tx.exec0("CREATE SCHEMA " + scratch);
    tx.exec0("SET LOCAL search_path TO " + scratch);
    for (const Migration& m : Migrations("tenant")) tx.exec0(std::string(m.sql));
    tx.exec0("SET LOCAL search_path TO DEFAULT");
    tx.exec0("CREATE SCHEMA IF NOT EXISTS " + schema);
    TenantRepair repair;
    const auto missing = tx.exec_params(
        "SELECT t.table_name FROM information_schema.tables t WHERE t.table_schema = $1 AND "
        "NOT EXISTS (SELECT 1 FROM information_schema.tables x WHERE x.table_schema = $2 AND "
        "x.table_name = t.table_name) ORDER BY 1",
        scratch_name, schema_name);
    for (const auto& row : missing) {
      const auto table = row[0].as<std::string>();
      // Indexes, constraints and the sequences its columns own move with the table.
      tx.exec0("ALTER TABLE " + scratch + "." + tx.quote_name(table) + " SET SCHEMA " + schema);
      repair.recreated_tables.push_back(table);
    }
    const auto columns = tx.exec_params(
        "SELECT c.table_name || '.' || c.column_name FROM information_schema.columns c WHERE "
        "c.table_schema = $1 AND NOT EXISTS (SELECT 1 FROM information_schema.columns x WHERE "
        "x.table_schema = $2 AND x.table_name = c.table_name AND x.column_name = "
        "c.column_name) ORDER BY 1",
        scratch_name, schema_name);
    for (const auto& row : columns) repair.missing_columns.push_back(row[0].as<std::string>());
    tx.exec0("DROP SCHEMA " + scratch + " CASCADE");
    tx.commit();
    for (const auto& table : repair.recreated_tables) {
      observability::LogWarn("tenant table recreated (it was missing)",
                             {{"schema", schema_name}, {"table", table}});
    }
    return repair;
  } catch (const std::exception& e) {
    return Err{std::string("repairing schema ") + schema_name + ": " + e.what()};
  }
}

struct PgStore::Connection {
  Connection(const std::string& dsn, std::chrono::milliseconds lock_timeout) : conn(dsn) {
    // Prepared batch statements run with few rows per tenant: plan them once instead of
    // re-planning the first executions of every tenant's statements.
    // jsonb_to_recordset is always estimated at 100 rows, which makes the planner hash-join
    // whole tenant tables; the batches join a few rows by primary key: use the indexes.
    // A lock held elsewhere on a tenant's table fails the statement after lock_timeout.
    pqxx::nontransaction tx(conn);
    tx.exec0(SessionSettings(lock_timeout));
  }
  pqxx::connection conn;
};

PgStore::PgStore(std::string dsn, std::string ops_schema, std::string tenant_prefix,
                 size_t statement_cache, std::chrono::milliseconds lock_timeout)
    : dsn_(std::move(dsn)),
      ops_schema_(std::move(ops_schema)),
      tenant_prefix_(std::move(tenant_prefix)),
      lock_timeout_(lock_timeout),
      pipelined_(dsn_, ops_schema_, tenant_prefix_, statement_cache, lock_timeout) {}

PgStore::~PgStore() = default;

PgStore::Connection& PgStore::Conn() {
  if (conn_ && ServerSpokeWhileIdle(conn_->conn.sock())) conn_.reset();  // closed meanwhile
  if (!conn_ || !conn_->conn.is_open()) {
    conn_.reset();
    conn_ = std::make_unique<Connection>(dsn_, lock_timeout_);
  }
  return *conn_;
}

void PgStore::Reset() { conn_.reset(); }

template <typename Body>
auto PgStore::WithConnection(Body&& body) {
  // Conn() replaces a connection the server has visibly closed since its last use (a restart,
  // an idle timeout). One whose end has not shown yet fails its first statement: the work
  // then runs once more on a new connection. Either way a restart is neither taken for an
  // outage nor charged to an event.
  if (conn_ != nullptr) {
    try {
      return body(Conn().conn);
    } catch (const pqxx::broken_connection&) {
      Reset();
    }
  }
  return body(Conn().conn);
}

bool PgStore::Ping() {
  std::lock_guard lock(mu_);
  try {
    return WithConnection([](pqxx::connection& conn) {
      pqxx::nontransaction tx(conn);
      tx.exec1("SELECT 1");
      return true;
    });
  } catch (...) {
    Reset();
    return false;
  }
}

Result<Unit, StoreError> PgStore::EnsureTenant(const std::string& company_id) {
  std::lock_guard lock(mu_);
  if (known_tenants_.count(company_id)) return Unit{};
  if (routing::TenantIdError(company_id)) {
    // Never reached from the pipeline (ids are validated first); guards every other caller.
    return Err{StoreError{StoreErrorKind::kFatal, "invalid tenant id"}};
  }
  const std::string schema_name = TenantSchemaName(tenant_prefix_, company_id);
  try {
    return WithConnection([&](pqxx::connection& conn) -> Result<Unit, StoreError> {
      pqxx::work tx(conn);
      const std::string ops = tx.quote_name(ops_schema_);
      tx.exec_params("SELECT pg_advisory_xact_lock(hashtext('evp-tenant:' || $1))", schema_name);
      auto rows = tx.exec_params("SELECT company_id, migration_version FROM " + ops +
                                     ".tenants WHERE lower(company_id) = lower($1)",
                                 company_id);
      int current = 0;
      if (!rows.empty()) {
        const auto registered = rows[0][0].as<std::string>();
        if (registered != company_id) {
          return Err{StoreError{
              StoreErrorKind::kCollision,
              "company_id '" + company_id + "' collides with registered tenant '" + registered +
                  "' (ids differing only by case would share schema " + schema_name + ")"}};
        }
        current = rows[0][1].as<int>();
      }
      const int latest = LatestTenantVersion();
      if (current < latest) {
        const std::string schema = tx.quote_name(schema_name);
        tx.exec0("CREATE SCHEMA IF NOT EXISTS " + schema);
        tx.exec0("SET LOCAL search_path TO " + schema);
        for (const Migration& m : Migrations("tenant")) {
          if (m.version <= current) continue;
          tx.exec0(std::string(m.sql));
        }
        tx.exec0("SET LOCAL search_path TO DEFAULT");
        tx.exec_params0("INSERT INTO " + ops +
                            ".tenants (company_id, schema_name, migration_version) VALUES ($1, $2, "
                            "$3) ON CONFLICT (company_id) DO UPDATE SET migration_version = "
                            "EXCLUDED.migration_version, updated_at = now()",
                        company_id, schema_name, latest);
        observability::LogInfo(
            "tenant schema ready",
            {{"company_id", company_id}, {"schema", schema_name}, {"migration_version", latest}});
      }
      tx.commit();
      known_tenants_.insert(company_id);
      return Unit{};
    });
  } catch (...) {
    StoreError err = ClassifyCurrentException();
    if (err.kind == StoreErrorKind::kTransient) Reset();
    return Err{err};
  }
}

namespace {

ApplyResult ApplyOne(pqxx::dbtransaction& tx, const std::string& tenant_prefix, const Mutation& m) {
  const handlers::TableDef& def = handlers::Definition(m.table);
  const std::string table =
      tx.quote_name(TenantSchemaName(tenant_prefix, m.company_id)) + "." + Quoted(def.name);
  std::vector<std::string> params;
  params.reserve(m.values.size() + 3);
  for (const auto& v : m.values) params.push_back(v.text);
  auto param = [&](size_t i) { return "$" + std::to_string(i + 1); };
  const size_t n = m.values.size();
  params.push_back(std::to_string(m.version.seconds));
  params.push_back(std::to_string(static_cast<int>(m.version.source)));
  params.push_back(std::to_string(m.version.seq));
  const std::string ver_ts = param(n) + "::bigint";
  const std::string ver_src = param(n + 1) + "::smallint";
  const std::string ver_seq = param(n + 2) + "::bigint";

  std::string key_cond;
  for (size_t i = 0; i < def.key_count; ++i) {
    if (i) key_cond += " AND ";
    key_cond += "cur." + Quoted(m.values[i].column->name) + " = " + param(i) + "::text";
  }
  const std::string schema = tx.quote_name(TenantSchemaName(tenant_prefix, m.company_id));
  std::string sql;
  if (m.kind == WriteKind::kUpsert) {
    std::string cols;
    std::string vals;
    std::string sets;
    for (size_t i = 0; i < n; ++i) {
      const auto& col = *m.values[i].column;
      cols += Quoted(col.name) + ", ";
      vals += Cast(col.type, param(i)) + ", ";
      if (i >= def.key_count) sets += Quoted(col.name) + " = EXCLUDED." + Quoted(col.name) + ", ";
    }
    std::string keys;
    for (size_t i = 0; i < def.key_count; ++i) {
      keys += (i ? ", " : "") + Quoted(def.columns[i].name);
    }
    if (m.table == handlers::Table::kContacts) {
      // As SetWriter: the first realtime upsert, or 0; absent columns are NULL in EXCLUDED,
      // as in the set-based statement.
      sql = "INSERT INTO " + table + " AS cur (" + cols +
            "first_upsert_seq, ver_ts, ver_src, ver_seq) VALUES (" + vals + "CASE WHEN " + ver_src +
            " = 1 THEN " + ver_seq + " ELSE 0 END, " + ver_ts + ", " + ver_src + ", " + ver_seq +
            ") ON CONFLICT (" + keys + ") " + SetWriter::ContactsUpsertConflict() + " RETURNING 1";
    } else {
      sql = "INSERT INTO " + table + " AS cur (" + cols + "ver_ts, ver_src, ver_seq) VALUES (" +
            vals + ver_ts + ", " + ver_src + ", " + ver_seq + ") ON CONFLICT (" + keys +
            ") DO UPDATE SET " + sets +
            "ver_ts = EXCLUDED.ver_ts, ver_src = EXCLUDED.ver_src, ver_seq = EXCLUDED.ver_seq, "
            "updated_at = now() WHERE (cur.ver_ts, cur.ver_src, cur.ver_seq) <= "
            "(EXCLUDED.ver_ts, EXCLUDED.ver_src, EXCLUDED.ver_seq) RETURNING 1";
    }
  } else {
    std::string sets;
    for (size_t i = def.key_count; i < n; ++i) {
      const auto& col = *m.values[i].column;
      sets += Quoted(col.name) + " = " + Cast(col.type, param(i)) + ", ";
    }
    if (m.table == handlers::Table::kContacts) {
      // The columns this event writes no longer hold what onboarding wrote.
      sets += "onboarded_cols = cur.onboarded_cols & ~" +
              std::to_string(SetWriter::OnboardedBits(m)) + ", ";
    }
    sql = "UPDATE " + table + " AS cur SET " + sets + "ver_ts = " + ver_ts +
          ", ver_src = " + ver_src + ", ver_seq = " + ver_seq + ", updated_at = now() WHERE " +
          key_cond + " AND (cur.ver_ts, cur.ver_src, cur.ver_seq) <= (" + ver_ts + ", " + ver_src +
          ", " + ver_seq + ") RETURNING 1";
  }
  pqxx::result r = tx.exec_params(sql, pqxx::prepare::make_dynamic_params(params));
  ApplyResult result{r.empty() ? ApplyOutcome::kStale : ApplyOutcome::kApplied, ""};
  if (r.empty() && m.kind == WriteKind::kUpdate) {
    // Stale only when a newer version is stored. A row that is missing, or that another
    // writer committed after the UPDATE's snapshot, means "not yet": the update is retried.
    std::vector<std::string> check(params.begin(),
                                   params.begin() + static_cast<long>(def.key_count));
    const size_t k = def.key_count;
    for (size_t i = n; i < n + 3; ++i) check.push_back(params[i]);
    auto newer = tx.exec_params("SELECT 1 FROM " + table + " AS cur WHERE " + key_cond +
                                    " AND (cur.ver_ts, cur.ver_src, cur.ver_seq) > (" + param(k) +
                                    "::bigint, " + param(k + 1) + "::smallint, " + param(k + 2) +
                                    "::bigint)",
                                pqxx::prepare::make_dynamic_params(check));
    if (newer.empty()) result = {ApplyOutcome::kNotYet, m.KeyText()};
  }
  if (m.onboarding) {
    std::string rows;
    SetWriter::AppendOnboarding(rows, m);
    tx.exec_params0(SetWriter::OnboardingSql('o', schema), rows + "]", m.company_id);
  }
  if (SetWriter::MarksFirstUpsert(m)) {
    std::string rows;
    SetWriter::AppendContactSeq(rows, m);
    tx.exec_params0(SetWriter::OnboardingSql('c', schema), rows + "]");
  }
  return result;
}

}  // namespace

Result<std::vector<ApplyResult>, StoreError> PgStore::Apply(std::vector<Mutation> mutations) {
  std::lock_guard lock(mu_);
  // Fast path: the whole batch in one transaction, set-based, in one round trip.
  const bool reused = pipelined_.HasConnection();
  PipelinedWriter::Outcome fast = pipelined_.Write(mutations);
  if (fast.failure == PipelinedWriter::Failure::kConnection && reused) {
    // A connection whose end did not show before it was used (the writer replaces those
    // the server visibly closed): one more try on a new connection before the database
    // counts as unavailable, so a restart costs no event a delivery or a DLQ attempt. Safe
    // even when the first commit happened unseen: every write is idempotent.
    fast = pipelined_.Write(mutations);
  }
  if (fast.failure == PipelinedWriter::Failure::kNone) return std::move(fast.results);
  if (fast.failure == PipelinedWriter::Failure::kConnection && LostConnection()) {
    Reset();
    return Err{StoreError{StoreErrorKind::kTransient, fast.message}};
  }
  observability::LogWarn("batch write failed; isolating the failing events",
                         {{"error", fast.message}, {"mutations", mutations.size()}});
  return Isolate(mutations, std::move(fast));
}

Result<std::vector<ApplyResult>, StoreError> PgStore::Isolate(
    const std::vector<Mutation>& mutations, PipelinedWriter::Outcome failed) {
  // The failing statement names its tenant. That tenant's events are decided apart: all
  // retried later when the error is transient (a lock held on its table until
  // lock_timeout, a serialization failure), else written one by one so that only the
  // culprit fails. The other tenants' events are written again together, and so on until
  // they commit. Without a known tenant (BEGIN or COMMIT failed), every event is written
  // alone.
  std::vector<ApplyResult> results(mutations.size());
  std::vector<size_t> open(mutations.size());
  for (size_t i = 0; i < open.size(); ++i) open[i] = i;
  StoreError error;
  while (!open.empty()) {
    std::vector<size_t> tenant;
    std::vector<size_t> rest;
    const std::string* culprit = nullptr;
    for (size_t i : open) {
      const Mutation& m = mutations[i];
      if (culprit == nullptr && !failed.failed_schema.empty() &&
          TenantSchemaName(tenant_prefix_, m.company_id) == failed.failed_schema) {
        culprit = &m.company_id;
      }
      (culprit != nullptr && m.company_id == *culprit ? tenant : rest).push_back(i);
    }
    if (culprit == nullptr) {
      if (!WriteOneByOne(mutations, open, results, error)) return Err{error};
      break;
    }
    if (pipeline::ClassifySqlState(failed.sqlstate) == StoreErrorKind::kTransient) {
      observability::LogWarn(
          "a tenant's write failed; its events are retried later",
          {{"company_id", *culprit}, {"error", failed.message}, {"mutations", tenant.size()}});
      for (size_t i : tenant) results[i] = {ApplyOutcome::kRetry, failed.message};
    } else if (!WriteOneByOne(mutations, tenant, results, error)) {
      return Err{error};
    }
    if (rest.empty()) break;
    std::vector<Mutation> others;
    others.reserve(rest.size());
    for (size_t i : rest) others.push_back(mutations[i]);
    PipelinedWriter::Outcome again = pipelined_.Write(others);
    if (again.failure == PipelinedWriter::Failure::kNone) {
      for (size_t k = 0; k < rest.size(); ++k) results[rest[k]] = again.results[k];
      break;
    }
    // A failed connection blames no tenant (failed_schema empty): then each event alone.
    if (again.failure == PipelinedWriter::Failure::kConnection && LostConnection()) {
      Reset();
      return Err{StoreError{StoreErrorKind::kTransient, again.message}};
    }
    failed = std::move(again);
    open = std::move(rest);
  }
  return results;
}

bool PgStore::WriteOneByOne(const std::vector<Mutation>& mutations,
                            const std::vector<size_t>& indices, std::vector<ApplyResult>& results,
                            StoreError& error) {
  for (size_t i : indices) {
    try {
      pqxx::work tx(Conn().conn);
      ApplyResult r = ApplyOne(tx, tenant_prefix_, mutations[i]);
      tx.commit();
      results[i] = r;
    } catch (...) {
      StoreError err = ClassifyCurrentException();
      if (err.kind == StoreErrorKind::kFatal) {
        results[i] = {ApplyOutcome::kFatal, err.message};
      } else if (LostConnection()) {
        Reset();
        error = err;
        return false;
      } else {
        results[i] = {ApplyOutcome::kRetry, err.message};
      }
    }
  }
  return true;
}

bool PgStore::LostConnection() {
  if (!conn_ || !conn_->conn.is_open()) return true;
  try {
    pqxx::nontransaction tx(conn_->conn);
    tx.exec1("SELECT 1");
    return false;
  } catch (...) {
    return true;
  }
}

// company_id and source_subject of exhausted_events are indexed, and a btree entry holds at
// most about 2.7 KB: a longer value would fail the insert on every try. (The DLQ headers
// carry at most 2 KiB of either; a dead letter recorded directly may carry more.)
constexpr size_t kIndexedTextMax = 2048;

Result<bool, StoreError> PgStore::RecordExhausted(const DeadLetter& dl,
                                                  const std::string& final_reason) {
  std::lock_guard lock(mu_);
  try {
    return WithConnection([&](pqxx::connection& conn) -> Result<bool, StoreError> {
      pqxx::work tx(conn);
      const std::string ops = tx.quote_name(ops_schema_);
      auto r = tx.exec_params(
          "INSERT INTO " + ops +
              ".exhausted_events (idempotency_key, company_id, source_subject, error_class, "
              "reason, attempts, original_payload, dlq_metadata, first_failed_at, last_failed_at) "
              "VALUES ($1, $2, $3, $4, $5, $6, decode($7, 'hex'), $8::jsonb, "
              "to_timestamp($9::bigint / 1000.0), to_timestamp($10::bigint / 1000.0)) "
              "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
          SafeUtf8(dl.IdempotencyKey()), SafeUtf8(dl.company_id.substr(0, kIndexedTextMax)),
          SafeUtf8(dl.source_subject.substr(0, kIndexedTextMax)),
          std::string(ErrorClassName(dl.error_class)), SafeUtf8(final_reason), dl.attempts,
          HexEncode(dl.original), MetadataJson(dl), dl.first_failed_ms, dl.last_failed_ms);
      tx.commit();
      return !r.empty();
    });
  } catch (...) {
    StoreError err = ClassifyCurrentException();
    Reset();
    return Err{err};
  }
}

Result<bool, StoreError> PgStore::IsRecorded(const std::string& idempotency_key) {
  std::lock_guard lock(mu_);
  try {
    return WithConnection([&](pqxx::connection& conn) -> Result<bool, StoreError> {
      pqxx::nontransaction tx(conn);
      auto r = tx.exec_params("SELECT 1 FROM " + tx.quote_name(ops_schema_) +
                                  ".exhausted_events WHERE idempotency_key = $1",
                              SafeUtf8(idempotency_key));
      return !r.empty();
    });
  } catch (...) {
    StoreError err = ClassifyCurrentException();
    Reset();
    return Err{err};
  }
}

PgWriterPool::PgWriterPool(const Config& config, int size) {
  for (int i = 0; i < std::max(1, size); ++i) {
    stores_.push_back(std::make_unique<PgStore>(
        config.postgres_dsn, config.ops_schema, config.tenant_schema_prefix,
        static_cast<size_t>(config.db_statement_cache), config.db_lock_timeout));
  }
  tenants_at_.assign(stores_.size(), 0);
  for (size_t k = 1; k < stores_.size(); ++k) writers_.push_back(std::make_unique<WorkerThread>());
}

size_t PgWriterPool::HomeOf(const std::string& company_id) {
  auto it = home_.find(company_id);
  if (it != home_.end()) return it->second;
  const size_t home = static_cast<size_t>(std::min_element(tenants_at_.begin(), tenants_at_.end()) -
                                          tenants_at_.begin());
  ++tenants_at_[home];
  home_.emplace(company_id, home);
  return home;
}

size_t PgWriterPool::ConnectionOf(const std::string& company_id) {
  std::lock_guard lock(known_mu_);
  return HomeOf(company_id);
}

Result<Unit, StoreError> PgWriterPool::EnsureTenant(const std::string& company_id) {
  size_t home = 0;
  {
    std::lock_guard lock(known_mu_);
    if (known_tenants_.count(company_id) != 0) return Unit{};
    home = HomeOf(company_id);
  }
  auto r = stores_[home]->EnsureTenant(company_id);
  if (r.ok()) {
    std::lock_guard lock(known_mu_);
    known_tenants_.insert(company_id);
  }
  return r;
}

void PgWriterPool::PrepareTenants(const std::vector<std::string>& company_ids) {
  // Each connection creates the unknown tenants it is home to; failures are left to
  // EnsureTenant, which repeats the attempt and reports the error.
  std::vector<std::vector<std::string>> unknown(stores_.size());
  size_t count = 0;
  {
    std::lock_guard lock(known_mu_);
    for (const auto& id : company_ids) {
      if (known_tenants_.count(id) != 0) continue;
      unknown[HomeOf(id)].push_back(id);
      ++count;
    }
  }
  if (count < 2 || stores_.size() < 2) return;  // EnsureTenant does it
  auto create = [this, &unknown](size_t k) {
    std::vector<std::string> ready;
    for (const std::string& id : unknown[k]) {
      if (stores_[k]->EnsureTenant(id).ok()) ready.push_back(id);
    }
    return ready;
  };
  auto remember = [this](const std::vector<std::string>& ready) {
    std::lock_guard lock(known_mu_);
    known_tenants_.insert(ready.begin(), ready.end());
  };
  std::vector<std::future<std::vector<std::string>>> created;
  created.reserve(writers_.size());  // a push_back cannot fail after its task was queued
  WaitOnExit wait_created(created);
  for (size_t k = 1; k < stores_.size(); ++k) {
    if (!unknown[k].empty())
      created.push_back(writers_[k - 1]->Run([&create, k] { return create(k); }));
  }
  remember(create(0));
  for (auto& f : created) remember(f.get());
}

bool PgWriterPool::Ping() { return stores_.front()->Ping(); }

Result<bool, StoreError> PgWriterPool::RecordExhausted(const DeadLetter& letter,
                                                       const std::string& final_reason) {
  return stores_.back()->RecordExhausted(letter, final_reason);
}

Result<bool, StoreError> PgWriterPool::IsRecorded(const std::string& idempotency_key) {
  return stores_.back()->IsRecorded(idempotency_key);
}

Result<std::vector<ApplyResult>, StoreError> PgWriterPool::Apply(std::vector<Mutation> mutations) {
  // Each tenant's events go to its home connection, all of them in one transaction. A
  // connection's share is written in transactions of at most kTenantsPerTransaction tenants:
  // every statement holds locks on its table and indexes until the commit, and PostgreSQL's
  // lock table is shared by all backends.
  struct Part {
    std::vector<size_t> indices;  // into mutations
    std::vector<Mutation> input;
  };
  const size_t n = stores_.size();
  const size_t count = mutations.size();
  std::vector<std::vector<Part>> parts(n);  // per connection, its transactions
  {
    std::lock_guard lock(known_mu_);
    // tenant -> (its home, its part there); the home is looked up once per tenant
    std::unordered_map<std::string_view, std::pair<size_t, size_t>> part_of;
    std::vector<size_t> tenants(n, 0);  // tenants of the batch per home
    for (size_t i = 0; i < mutations.size(); ++i) {
      auto [it, inserted] = part_of.try_emplace(mutations[i].company_id);
      auto& [home, part] = it->second;
      if (inserted) {
        home = HomeOf(mutations[i].company_id);
        part = tenants[home]++ / kTenantsPerTransaction;
        if (parts[home].size() <= part) parts[home].resize(part + 1);
      }
      parts[home][part].indices.push_back(i);
    }
  }
  // The mutations move into their parts (part_of's keys point into them: it is gone by now).
  // One connection with one transaction takes the batch as it is.
  for (auto& home : parts) {
    if (home.size() == 1 && home[0].indices.size() == count) {
      home[0].input = std::move(mutations);
      break;
    }
    for (Part& part : home) {
      part.input.reserve(part.indices.size());
      for (size_t i : part.indices) part.input.push_back(std::move(mutations[i]));
    }
  }
  std::vector<ApplyResult> merged(count);
  // One connection's transactions, one after the other.
  auto write = [this, &parts, &merged](size_t home) -> Result<Unit, StoreError> {
    for (Part& part : parts[home]) {
      auto results = stores_[home]->Apply(std::move(part.input));
      if (!results.ok()) return Err{results.error()};
      for (size_t k = 0; k < part.indices.size(); ++k) {
        merged[part.indices[k]] = results.value()[k];
      }
    }
    return Unit{};
  };
  std::vector<std::future<Result<Unit, StoreError>>> futures;
  futures.reserve(writers_.size());  // a push_back cannot fail after its task was queued
  WaitOnExit wait_futures(futures);
  for (size_t home = 1; home < n; ++home) {
    if (parts[home].empty()) continue;
    futures.push_back(writers_[home - 1]->Run([&write, home] { return write(home); }));
  }
  std::optional<StoreError> failed;
  if (!parts[0].empty()) {
    if (auto r = write(0); !r.ok()) failed = r.error();
  }
  for (auto& f : futures) {
    if (auto r = f.get(); !r.ok() && !failed) failed = r.error();
  }
  if (failed) return Err{*failed};
  return merged;
}

}  // namespace evp::postgres
