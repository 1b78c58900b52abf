#include "postgres/pg_errors.hpp"

#include <poll.h>

#include <pqxx/pqxx>

#include "pipeline/error_policy.hpp"

namespace evp::postgres {

using pipeline::StoreError;
using pipeline::StoreErrorKind;

namespace {

std::string TransactionRollbackState(const pqxx::transaction_rollback& e) {
  if (dynamic_cast<const pqxx::serialization_failure*>(&e) != nullptr) return "40001";
  if (dynamic_cast<const pqxx::deadlock_detected*>(&e) != nullptr) return "40P01";
  if (dynamic_cast<const pqxx::statement_completion_unknown*>(&e) != nullptr) return "40003";
  return "40000";
}

}  // namespace

StoreError ClassifyCurrentException() {
  try {
    throw;
  } catch (const pqxx::broken_connection& e) {
    return {StoreErrorKind::kTransient, "connection lost: " + PrimaryErrorMessage(e.what())};
  } catch (const pqxx::in_doubt_error& e) {
    // Commit outcome unknown: retrying is safe because every write is idempotent.
    return {StoreErrorKind::kTransient, "commit in doubt: " + PrimaryErrorMessage(e.what())};
  } catch (const pqxx::sql_error& e) {
    return {pipeline::ClassifySqlState(e.sqlstate()),
            "SQLSTATE " + e.sqlstate() + ": " + PrimaryErrorMessage(e.what())};
  } catch (const pqxx::transaction_rollback& e) {
    // libpqxx 6.4 throws class 40 without its SQLSTATE and outside sql_error.
    return {StoreErrorKind::kTransient,
            "SQLSTATE " + TransactionRollbackState(e) + ": " + PrimaryErrorMessage(e.what())};
  } catch (const std::exception& e) {
    return {StoreErrorKind::kTransient, PrimaryErrorMessage(e.what())};
  }
}

bool ServerSpokeWhileIdle(int socket) {
  if (socket < 0) return true;
  pollfd p{socket, POLLIN, 0};
  return ::poll(&p, 1, 0) != 0;
}

std::string PrimaryErrorMessage(std::string_view message) {
  std::string_view line = message.substr(0, message.find('\n'));
  for (std::string_view severity : {"ERROR:", "FATAL:", "PANIC:"}) {
    if (line.substr(0, severity.size()) == severity) {
      line.remove_prefix(severity.size());
      break;
    }
  }
  while (!line.empty() && (line.front() == ' ')) line.remove_prefix(1);
  while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.remove_suffix(1);
  return std::string(line);
}

}  // namespace evp::postgres
