#pragma once
// Small PostgreSQL helpers for test assertions (pqxx). SQL comes only from test code; each
// call opens its own connection, so they are safe from any thread and inside WaitFor().
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace evp::testing {

// First column of the single row `sql` returns. Throws on error, on a row count other than
// one, and on NULL.
int64_t QueryInt(const std::string& dsn, const std::string& sql);
// As QueryInt, but nullopt on any error (e.g. the schema does not exist yet): for polling.
std::optional<int64_t> TryQueryInt(const std::string& dsn, const std::string& sql);
// First column of the first row as text; nullopt when there is no row or it is NULL.
std::optional<std::string> QueryString(const std::string& dsn, const std::string& sql);
// First column of the first row, a bytea, as its raw bytes; nullopt when no row or NULL.
std::optional<std::string> QueryBytes(const std::string& dsn, const std::string& sql);
// Runs statements in one transaction and commits.
void Exec(const std::string& dsn, const std::string& sql);
// Runs statements that cannot run in a transaction block (CREATE / DROP DATABASE).
void ExecAutocommit(const std::string& dsn, const std::string& sql);
// `qualified_table` such as "tenant_acme.messages": exists / has at least one row.
bool TableExists(const std::string& dsn, const std::string& qualified_table);
bool TableHasRows(const std::string& dsn, const std::string& qualified_table);

// An open transaction holding a table lock (`mode`, e.g. "EXCLUSIVE": writes wait, reads do
// not) until Release() or destruction. It ends by itself after 60 s idle, so that a writer
// waiting for it without a timeout fails a test instead of hanging it.
class HeldLock {
 public:
  HeldLock(const std::string& dsn, const std::string& qualified_table, const std::string& mode);
  ~HeldLock();
  HeldLock(const HeldLock&) = delete;
  HeldLock& operator=(const HeldLock&) = delete;
  void Release();

 private:
  struct Session;
  std::unique_ptr<Session> session_;
};

}  // namespace evp::testing
