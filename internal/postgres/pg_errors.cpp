#include "postgres/pg_errors.hpp"

#include <pqxx/pqxx>

#include "pipeline/error_policy.hpp"

namespace evp::postgres {

using pipeline::StoreError;
using pipeline::StoreErrorKind;

StoreError ClassifyCurrentException() {
  try {
    throw;
  } catch (const pqxx::broken_connection& e) {
    return {StoreErrorKind::kTransient, std::string("connection lost: ") + e.what()};
  } catch (const pqxx::in_doubt_error& e) {
    // Commit outcome unknown: retrying is safe because every write is idempotent.
    return {StoreErrorKind::kTransient, std::string("commit in doubt: ") + e.what()};
  } catch (const pqxx::sql_error& e) {
    std::string what = e.what();
    while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
    return {pipeline::ClassifySqlState(e.sqlstate()), "SQLSTATE " + e.sqlstate() + ": " + what};
  } catch (const std::exception& e) {
    return {StoreErrorKind::kTransient, e.what()};
  }
}

}  // namespace evp::postgres
