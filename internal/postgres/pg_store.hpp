#pragma once
// PostgreSQL adapter: tenant schemas and migrations, row writes with version guards, and the
// exhausted-events store. The only files with pqxx in them are in this folder.
// Thread-safety: calls are serialised on the store (re-opened after a failure on the next
// call). A store has two connections: the pipelined batch writer's, and one for everything
// else (schemas, isolation of failing events, exhausted rows); PgWriterPool spreads a batch
// over several stores.
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "core/worker_thread.hpp"
#include "pipeline/ports.hpp"
#include "postgres/pipelined_writer.hpp"
#include "postgres/set_writer.hpp"

namespace evp::postgres {

// Applies the embedded migrations of the ops schema (idempotent): how many were applied now,
// or an error text.
Result<int, std::string> MigrateOps(const std::string& dsn, const std::string& ops_schema);

std::string TenantSchemaName(const std::string& prefix, const std::string& company_id);

// What RepairTenantTables found: the tables it recreated (empty), and the columns missing
// from tables that exist, which it cannot recreate (as "table.column").
struct TenantRepair {
  std::vector<std::string> recreated_tables;
  std::vector<std::string> missing_columns;
};

// Recreates the tables of a tenant schema that are missing although its recorded migration
// version says they exist (dropped by hand): the tenant migrations are applied to a scratch
// schema in one transaction and the missing tables moved over, with their indexes,
// constraints and sequences. `schema_name` must be at the latest version (EnsureTenant).
Result<TenantRepair, std::string> RepairTenantTables(const std::string& dsn,
                                                     const std::string& schema_name);

// One writer: an EventStore and ExhaustedStore on its own two connections. Thread-safe:
// concurrent calls take turns on its mutex; PgWriterPool writes over several at once.
class PgStore final : public pipeline::EventStore, public pipeline::ExhaustedStore {
 public:
  PgStore(std::string dsn, std::string ops_schema, std::string tenant_prefix,
          size_t statement_cache = PipelinedWriter::kDefaultStatementCache,
          std::chrono::milliseconds lock_timeout = PipelinedWriter::kDefaultLockTimeout);
  ~PgStore() override;

  Result<Unit, pipeline::StoreError> EnsureTenant(const std::string& company_id) override;
  Result<std::vector<pipeline::ApplyResult>, pipeline::StoreError> Apply(
      std::vector<handlers::Mutation> mutations) override;
  bool Ping() override;
  Result<bool, pipeline::StoreError> RecordExhausted(const DeadLetter& letter,
                                                     const std::string& final_reason) override;
  Result<bool, pipeline::StoreError> IsRecorded(const std::string& idempotency_key) override;

 private:
  struct Connection;  // wraps pqxx::connection, kept out of this header
  Connection& Conn();
  void Reset();
  // body(pqxx::connection&) on the connection; once more on a new one when the server had
  // closed the one kept from before.
  template <typename Body>
  auto WithConnection(Body&& body);
  // True when the connection is gone or the database does not answer (an outage, as
  // opposed to an error of one statement).
  bool LostConnection();
  // After a failed batch write (`failed`) while the database is still there: decides every
  // mutation, committing all that can be (see Apply).
  Result<std::vector<pipeline::ApplyResult>, pipeline::StoreError> Isolate(
      const std::vector<handlers::Mutation>& mutations, PipelinedWriter::Outcome failed);
  // Writes each of `indices` alone (one transaction each) into `results`; false when the
  // connection was lost meanwhile (`error` set).
  bool WriteOneByOne(const std::vector<handlers::Mutation>& mutations,
                     const std::vector<size_t>& indices,
                     std::vector<pipeline::ApplyResult>& results, pipeline::StoreError& error);

  std::string dsn_;
  std::string ops_schema_;
  std::string tenant_prefix_;
  std::chrono::milliseconds lock_timeout_;
  std::mutex mu_;  // one connection: calls from the prepare and write phases take turns
  std::unique_ptr<Connection> conn_;
  PipelinedWriter pipelined_;  // the fast path, on a connection of its own
  std::set<std::string> known_tenants_;
};

// DB_POOL_SIZE stores writing one batch in parallel: tenants are spread over the
// connections (a tenant's events always share one transaction), so PostgreSQL can use
// more than one core. Each tenant keeps its connection (its home): a PostgreSQL backend
// caches the catalog entries and prepared statements of every tenant it writes, so with
// 1,000 tenants dealing them anew in every batch would make each backend hold all of them.
// Thread-safe.
class PgWriterPool final : public pipeline::EventStore, public pipeline::ExhaustedStore {
 public:
  PgWriterPool(const Config& config, int size);

  Result<Unit, pipeline::StoreError> EnsureTenant(const std::string& company_id) override;
  // Creates the unknown tenants' schemas over all the connections at once (DDL is mostly
  // waiting for commits: 1,000 first-seen tenants would otherwise be created one by one).
  void PrepareTenants(const std::vector<std::string>& company_ids) override;
  Result<std::vector<pipeline::ApplyResult>, pipeline::StoreError> Apply(
      std::vector<handlers::Mutation> mutations) override;
  bool Ping() override;
  Result<bool, pipeline::StoreError> RecordExhausted(const DeadLetter& letter,
                                                     const std::string& final_reason) override;
  Result<bool, pipeline::StoreError> IsRecorded(const std::string& idempotency_key) override;
  // The connection (0 .. size - 1) that writes the tenant's events.
  size_t ConnectionOf(const std::string& company_id);

  // Tenants written in one transaction at most. Each holds up to 11 relation locks (a table
  // and its indexes per table written) until the commit; PostgreSQL's lock table holds about
  // max_locks_per_transaction x max_connections of them for all backends together (6,400 by
  // default), and a batch over thousands of tenants in one transaction per connection would
  // fail with "out of shared memory".
  static constexpr size_t kTenantsPerTransaction = 100;

 private:
  // The home connection of a tenant: the one with the fewest tenants when it is first seen.
  size_t HomeOf(const std::string& company_id);  // needs known_mu_

  std::vector<std::unique_ptr<PgStore>> stores_;
  std::mutex known_mu_;
  std::set<std::string> known_tenants_;  // ready, whichever connection created them
  std::unordered_map<std::string, size_t> home_;
  std::vector<size_t> tenants_at_;  // tenants per connection (home_ counted)
  // writers_[k - 1] runs connection k's share of a write; the caller writes connection 0's.
  std::vector<std::unique_ptr<WorkerThread>> writers_;
};

}  // namespace evp::postgres
