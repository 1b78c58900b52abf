// The EventStore contract (support/store_contract.hpp) on the PostgreSQL writer pool, the
// store the processor runs with; unit/store_contract_test.cpp runs the same cases on the
// in-memory fake.
#include "support/store_contract.hpp"

#include <memory>
#include <optional>
#include <string>

#include "config/config.hpp"
#include "postgres/pg_store.hpp"
#include "support/db.hpp"
#include "support/mutations.hpp"
#include "support/servers.hpp"

namespace evp::testing {
namespace {

class PostgresHarness {
 public:
  PostgresHarness() : dsn_(PostgresServer::Shared().Dsn()) {
    auto migrated = postgres::MigrateOps(dsn_, kOpsSchema);
    if (!migrated.ok()) ADD_FAILURE() << migrated.error();
    Config config;
    config.postgres_dsn = dsn_;
    config.ops_schema = kOpsSchema;
    config.tenant_schema_prefix = kTenantPrefix;
    pool_ = std::make_unique<postgres::PgWriterPool>(config, 2);
  }
  pipeline::EventStore& Store() { return *pool_; }
  std::string NewTenant(const std::string& stem) { return UniqueName(stem); }
  // Keys and values of these tests are plain words: quoting them as literals is safe here.
  std::optional<std::string> Text(const std::string& tenant, handlers::Table table,
                                  const std::string& key, const std::string& column) {
    std::string where;
    size_t start = 0;
    while (start < key.size()) {
      size_t end = key.find(',', start);
      if (end == std::string::npos) end = key.size();
      const std::string pair = key.substr(start, end - start);
      const size_t eq = pair.find('=');
      where +=
          (where.empty() ? "" : " AND ") + pair.substr(0, eq) + " = '" + pair.substr(eq + 1) + "'";
      start = end + 1;
    }
    const std::string value = column == "tags" ? "array_to_json(tags)::text" : column + "::text";
    return QueryString(dsn_, "SELECT " + value + " FROM " + Schema(tenant) + "." +
                                 std::string(handlers::Definition(table).name) + " WHERE " + where);
  }
  void RefuseMessage(const std::string& tenant, const std::string& message_id) {
    Exec(dsn_, "ALTER TABLE " + Schema(tenant) + ".messages ADD CONSTRAINT refused CHECK " +
                   "(message_id <> '" + message_id + "')");
  }
  size_t OnboardingLogRows(const std::string& tenant) {
    return static_cast<size_t>(
        QueryInt(dsn_, "SELECT count(*) FROM " + Schema(tenant) + ".onboarding_log"));
  }

 private:
  static std::string Schema(const std::string& tenant) {
    return postgres::TenantSchemaName(kTenantPrefix, tenant);
  }

  std::string dsn_;
  std::unique_ptr<postgres::PgWriterPool> pool_;
};

INSTANTIATE_TYPED_TEST_SUITE_P(StoreContractOnPostgreSQL, EventStoreContract,
                               ::testing::Types<PostgresHarness>);

}  // namespace
}  // namespace evp::testing
