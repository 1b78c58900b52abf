#include "support/db.hpp"

#include <pqxx/pqxx>
#include <stdexcept>

namespace evp::testing {

int64_t QueryInt(const std::string& dsn, const std::string& sql) {
  pqxx::connection conn(dsn);
  pqxx::work tx(conn);
  pqxx::row row = tx.exec1(sql);
  tx.commit();
  if (row[0].is_null()) throw std::runtime_error("NULL result of: " + sql);
  return row[0].as<int64_t>();
}

std::optional<int64_t> TryQueryInt(const std::string& dsn, const std::string& sql) {
  try {
    return QueryInt(dsn, sql);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::optional<std::string> QueryString(const std::string& dsn, const std::string& sql) {
  pqxx::connection conn(dsn);
  pqxx::work tx(conn);
  pqxx::result result = tx.exec(sql);
  tx.commit();
  if (result.empty() || result[0][0].is_null()) return std::nullopt;
  return result[0][0].as<std::string>();
}

std::optional<std::string> QueryBytes(const std::string& dsn, const std::string& sql) {
  pqxx::connection conn(dsn);
  pqxx::work tx(conn);
  pqxx::result result = tx.exec(sql);
  tx.commit();
  if (result.empty() || result[0][0].is_null()) return std::nullopt;
  return pqxx::binarystring(result[0][0]).str();
}

void Exec(const std::string& dsn, const std::string& sql) {
  pqxx::connection conn(dsn);
  pqxx::work tx(conn);
  tx.exec(sql);
  tx.commit();
}

void ExecAutocommit(const std::string& dsn, const std::string& sql) {
  pqxx::connection conn(dsn);
  pqxx::nontransaction tx(conn);
  tx.exec(sql);
}

bool TableExists(const std::string& dsn, const std::string& qualified_table) {
  pqxx::connection conn(dsn);
  pqxx::work tx(conn);
  pqxx::row row = tx.exec_params1("SELECT to_regclass($1) IS NOT NULL", qualified_table);
  tx.commit();
  return row[0].as<bool>();
}

bool TableHasRows(const std::string& dsn, const std::string& qualified_table) {
  if (!TableExists(dsn, qualified_table)) return false;
  return QueryInt(dsn,
                  "SELECT count(*) FROM (SELECT 1 FROM " + qualified_table + " LIMIT 1) AS t") > 0;
}

struct HeldLock::Session {
  explicit Session(const std::string& dsn) : conn(dsn), tx(conn) {}
  pqxx::connection conn;
  pqxx::work tx;
};

HeldLock::HeldLock(const std::string& dsn, const std::string& qualified_table,
                   const std::string& mode)
    : session_(std::make_unique<Session>(dsn)) {
  session_->tx.exec0("SET LOCAL idle_in_transaction_session_timeout = '60s'");
  session_->tx.exec0("LOCK TABLE " + qualified_table + " IN " + mode + " MODE");
}

HeldLock::~HeldLock() = default;

void HeldLock::Release() {
  if (session_) session_->tx.commit();
  session_.reset();
}

}  // namespace evp::testing
