#include "postgres/pg_errors.hpp"

#include <pqxx/pqxx>

namespace evp::postgres {

using pipeline::StoreError;
using pipeline::StoreErrorKind;

StoreErrorKind ClassifySqlState(const std::string& sqlstate) {
  const std::string cls = sqlstate.substr(0, 2);
  if (cls == "22" || cls == "23") return StoreErrorKind::kFatal;
  return StoreErrorKind::kTransient;
}

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
    return {ClassifySqlState(e.sqlstate()), "SQLSTATE " + e.sqlstate() + ": " + what};
  } catch (const std::exception& e) {
    return {StoreErrorKind::kTransient, e.what()};
  }
}

}  // namespace evp::postgres
