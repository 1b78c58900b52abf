#pragma once
// Writes a batch's statements (SetWriter::Plan) in libpq pipeline mode on a connection of
// its own: BEGIN, every write and COMMIT in one round trip, then, only when updates did not
// apply, their stale checks in a second one. The sequential SetWriter::Write stays the
// reference and the fallback: when a statement fails here, nothing is committed and the caller
// isolates the failing events. Not thread-safe (one per writer connection).
#include <chrono>
#include <list>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "handlers/mutation.hpp"
#include "pipeline/ports.hpp"
#include "postgres/set_writer.hpp"

struct pg_conn;

namespace evp::postgres {

// The session settings of every writer connection: generic plans, index joins for the few
// rows each statement carries, and `lock_timeout` (0 = wait as long as it takes).
std::string SessionSettings(std::chrono::milliseconds lock_timeout);

class PipelinedWriter {
 public:
  // `statement_cache`: prepared statements kept on the connection (least recently used go).
  // `ops_schema` holds the row types of the statements' parameters.
  // `lock_timeout`: how long a statement may wait for a lock (0 = no limit), so that a lock
  // held on one tenant's table cannot hold up the other tenants' writes for long.
  PipelinedWriter(std::string dsn, std::string ops_schema, std::string tenant_prefix,
                  size_t statement_cache = kDefaultStatementCache,
                  std::chrono::milliseconds lock_timeout = kDefaultLockTimeout);
  ~PipelinedWriter();
  PipelinedWriter(const PipelinedWriter&) = delete;
  PipelinedWriter& operator=(const PipelinedWriter&) = delete;

  // A PostgreSQL backend holds 70-350 KB per prepared statement with its plan, about 1 MB
  // for all of a tenant's, so the cache is bounded. 2,000 holds what 1,000 tenants spread
  // over 4 connections use.
  static constexpr size_t kDefaultStatementCache = 2000;
  static constexpr std::chrono::milliseconds kDefaultLockTimeout{5000};

  enum class Failure { kNone, kStatement, kConnection };
  struct Outcome {
    Failure failure = Failure::kNone;
    std::string message;   // the database's error for a failure
    std::string sqlstate;  // its SQLSTATE, when the database sent one
    // The tenant schema of the statement that failed; empty when no tenant's statement
    // failed (BEGIN, COMMIT), and always for Failure::kConnection.
    std::string failed_schema;
    std::vector<pipeline::ApplyResult> results;
  };
  // Commits all mutations in one transaction, or nothing (failure set).
  Outcome Write(std::span<const handlers::Mutation> mutations);
  // Statements prepared on the connection now.
  size_t PreparedCount() const { return prepared_.size(); }
  // Whether a connection opened earlier is kept (the server may have closed it since).
  bool HasConnection() const { return conn_ != nullptr; }

 private:
  bool Connect(std::string& error);
  // Looks up the row types of the statements' parameters and checks their columns.
  bool LoadRowTypes(std::string& error);
  // One round trip in pipeline mode: BEGIN (when `begin`), the steps, COMMIT (when
  // `commit`), a sync point; interprets the steps' rows into outcome.results and records the
  // first failing statement in outcome. False when the connection is lost.
  bool Exchange(const std::vector<const WriteStep*>& steps, bool begin, bool commit,
                Outcome& outcome);
  void Close();
  // Prepares the steps' statements that are not on the connection; with `evict`, after
  // deallocating the least recently used ones beyond the cache size (which reconnects when
  // that fails). False on a failure (set in outcome).
  bool PrepareStatements(const std::vector<const WriteStep*>& steps, bool evict, Outcome& outcome);

  std::string dsn_;
  std::string ops_schema_;
  SetWriter planner_;
  pg_conn* conn_ = nullptr;
  size_t statement_cache_;
  std::chrono::milliseconds lock_timeout_;
  // Prepared on the connection, most recently used first.
  std::list<std::string> lru_;
  std::unordered_map<std::string, std::list<std::string>::iterator> prepared_;
};

}  // namespace evp::postgres
