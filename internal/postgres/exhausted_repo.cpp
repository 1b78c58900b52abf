#include "postgres/exhausted_repo.hpp"

#include <algorithm>
#include <pqxx/pqxx>

#include "core/text.hpp"
#include "postgres/pg_errors.hpp"

namespace evp::postgres {

struct ExhaustedRepository::Connection {
  explicit Connection(const std::string& dsn) : conn(dsn) {
    // Times print and parse in UTC, whatever the server's or the role's TimeZone.
    pqxx::nontransaction(conn).exec0("SET TIME ZONE 'UTC'");
  }
  pqxx::connection conn;
};

ExhaustedRepository::ExhaustedRepository(std::string dsn, std::string ops_schema)
    : dsn_(std::move(dsn)), ops_schema_(std::move(ops_schema)) {}

ExhaustedRepository::~ExhaustedRepository() = default;

namespace {

ExhaustedRow ToRow(const pqxx::row& r, bool with_payload) {
  ExhaustedRow row;
  row.id = r["id"].as<int64_t>();
  row.company_id = r["company_id"].as<std::string>();
  row.source_subject = r["source_subject"].as<std::string>();
  row.error_class = r["error_class"].as<std::string>();
  row.reason = r["reason"].as<std::string>();
  row.attempts = r["attempts"].as<int64_t>();
  row.first_failed_at = r["first_failed_at"].as<std::string>();
  row.last_failed_at = r["last_failed_at"].as<std::string>();
  row.resolved = r["resolved"].as<bool>();
  row.resolved_at = r["resolved_at"].is_null() ? "" : r["resolved_at"].as<std::string>();
  row.notes = r["notes"].is_null() ? "" : r["notes"].as<std::string>();
  row.metadata_json = r["dlq_metadata"].as<std::string>();
  if (with_payload) row.payload = HexDecode(r["payload_hex"].as<std::string>());
  return row;
}

}  // namespace

Result<std::vector<ExhaustedRow>, std::string> ExhaustedRepository::List(const ExhaustedFilter& f,
                                                                         bool with_payload) {
  try {
    if (!conn_) conn_ = std::make_unique<Connection>(dsn_);
    pqxx::work tx(conn_->conn);
    std::vector<std::string> params;
    std::string where = "TRUE";
    auto add = [&](const std::string& cond, const std::string& value) {
      params.push_back(value);
      std::string c = cond;
      c.replace(c.find('?'), 1, "$" + std::to_string(params.size()));
      where += " AND " + c;
    };
    if (!f.ids.empty()) {
      std::string arr = "{";
      for (size_t i = 0; i < f.ids.size(); ++i) arr += (i ? "," : "") + std::to_string(f.ids[i]);
      add("id = ANY(?::bigint[])", arr + "}");
    }
    if (f.company_id) add("company_id = ?", *f.company_id);
    if (!f.subject.empty()) {
      // Only '%' is a wildcard: '_' is common in subjects (tenant ids) and stays literal.
      std::string pattern;
      for (char c : f.subject) {
        if (c == '_' || c == '\\') pattern += '\\';
        pattern += c;
      }
      add("source_subject LIKE ?", pattern);
    }
    if (!f.reason.empty()) add("reason_code = ?", f.reason);
    if (!f.error_class.empty()) add("error_class = ?", f.error_class);
    if (!f.since.empty()) add("last_failed_at >= ?::timestamptz", f.since);
    if (!f.until.empty()) add("last_failed_at < ?::timestamptz", f.until);
    if (f.resolved) add("resolved = ?::boolean", *f.resolved ? "true" : "false");
    params.push_back(std::to_string(f.limit));
    const std::string sql =
        "SELECT id, company_id, source_subject, error_class, reason, attempts, "
        "first_failed_at::text AS first_failed_at, last_failed_at::text AS last_failed_at, "
        "resolved, resolved_at::text AS resolved_at, notes, dlq_metadata::text AS dlq_metadata" +
        std::string(with_payload ? ", encode(original_payload, 'hex') AS payload_hex" : "") +
        " FROM " + tx.quote_name(ops_schema_) + ".exhausted_events WHERE " + where +
        " ORDER BY id" + std::string(f.newest_first ? " DESC" : "") + " LIMIT $" +
        std::to_string(params.size()) + "::bigint";
    pqxx::result res = tx.exec_params(sql, pqxx::prepare::make_dynamic_params(params));
    std::vector<ExhaustedRow> rows;
    rows.reserve(res.size());
    for (const auto& r : res) rows.push_back(ToRow(r, with_payload));
    tx.commit();
    return rows;
  } catch (const std::exception& e) {
    conn_.reset();
    return Err{std::string("listing exhausted events: ") + e.what()};
  }
}

Result<std::string, std::string> ExhaustedRepository::TimeError(const std::string& text) {
  try {
    if (!conn_) conn_ = std::make_unique<Connection>(dsn_);
    pqxx::nontransaction tx(conn_->conn);
    tx.exec_params1("SELECT $1::timestamptz", text);
    return std::string();
  } catch (const pqxx::data_exception& e) {
    return PrimaryErrorMessage(e.what());  // class 22: not a time
  } catch (const std::exception& e) {
    conn_.reset();
    return Err{std::string("checking a time: ") + e.what()};
  }
}

Result<std::optional<ExhaustedRow>, std::string> ExhaustedRepository::Get(int64_t id) {
  ExhaustedFilter f;
  f.ids = {id};
  f.resolved = std::nullopt;
  f.limit = 1;
  auto rows = List(f, true);
  if (!rows.ok()) return Err{rows.error()};
  if (rows->empty()) return std::optional<ExhaustedRow>{};
  return std::optional<ExhaustedRow>{rows->front()};
}

Result<std::vector<int64_t>, std::string> ExhaustedRepository::Resolve(
    const std::vector<int64_t>& ids, const std::string& note, bool again) {
  if (ids.empty()) return std::vector<int64_t>{};
  try {
    if (!conn_) conn_ = std::make_unique<Connection>(dsn_);
    pqxx::work tx(conn_->conn);
    std::string arr = "{";
    for (size_t i = 0; i < ids.size(); ++i) arr += (i ? "," : "") + std::to_string(ids[i]);
    arr += "}";
    pqxx::result r = tx.exec_params(
        "UPDATE " + tx.quote_name(ops_schema_) +
            ".exhausted_events SET resolved = true, resolved_at = now(), notes = CASE WHEN "
            "notes IS NULL OR notes = '' THEN $2 ELSE notes || E'\\n' || $2 END WHERE id = "
            "ANY($1::bigint[]) AND (NOT resolved OR $3) RETURNING id",
        arr, SafeUtf8(note), again);
    tx.commit();
    std::vector<int64_t> changed;
    changed.reserve(r.size());
    for (const auto& row : r) changed.push_back(row[0].as<int64_t>());
    std::sort(changed.begin(), changed.end());
    return changed;
  } catch (const std::exception& e) {
    conn_.reset();
    return Err{std::string("resolving exhausted events: ") + e.what()};
  }
}

Result<std::string, std::string> ExhaustedRepository::InstallationId() {
  try {
    if (!conn_) conn_ = std::make_unique<Connection>(dsn_);
    pqxx::work tx(conn_->conn);
    pqxx::result r =
        tx.exec("SELECT id::text FROM " + tx.quote_name(ops_schema_) + ".installation");
    tx.commit();
    if (r.empty()) return Err{std::string("no installation row in ") + ops_schema_};
    return r[0][0].as<std::string>();
  } catch (const std::exception& e) {
    conn_.reset();
    return Err{std::string("reading the installation id: ") + e.what()};
  }
}

}  // namespace evp::postgres
