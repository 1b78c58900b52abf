// What a PostgreSQL backend holds for many tenants stays bounded: each writer connection keeps
// at most its cache of prepared statements (each costs the backend 70-350 KB with its plan),
// and each tenant is written by one connection of the pool, so no backend prepares every
// tenant's statements. Real PostgreSQL.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "postgres/pg_store.hpp"
#include "postgres/pipelined_writer.hpp"
#include "support/db.hpp"
#include "support/mutations.hpp"
#include "support/servers.hpp"

namespace evp::testing {
namespace {

using handlers::Mutation;
using nlohmann::json;

Mutation Message(const std::string& tenant, uint64_t seq, const std::string& text) {
  return MessageUpsert(tenant, "m-" + tenant, seq, text);
}

Mutation Chat(const std::string& tenant, uint64_t seq) {
  json doc = {{"chat_id", "c1"}, {"agent_id", "a1"}, {"conversation_timestamp", 1000 + seq}};
  return handlers::BuildMutation(EventType::kChatsUpsert, doc, tenant,
                                 Version{static_cast<int64_t>(1000 + seq), Source::kRealtime, seq});
}

std::string TextOf(const std::string& dsn, const std::string& tenant) {
  return QueryString(dsn, "SELECT message_text FROM " + std::string(kTenantPrefix) + tenant +
                              ".messages WHERE message_id = 'm-" + tenant + "'")
      .value_or("<none>");
}

class StatementCache : public ::testing::Test {
 protected:
  void SetUp() override {
    dsn_ = PostgresServer::Shared().Dsn();
    auto migrated = postgres::MigrateOps(dsn_, kOpsSchema);
    ASSERT_TRUE(migrated.ok()) << migrated.error();
  }
  // A writer pool of `size` connections on the test database, with tenants named `stem`0 to
  // `stem`count-1 created.
  std::unique_ptr<postgres::PgWriterPool> PoolWithTenants(int size, const std::string& stem,
                                                          int count,
                                                          std::vector<std::string>& tenants) {
    Config config;
    config.postgres_dsn = dsn_;
    config.ops_schema = kOpsSchema;
    config.tenant_schema_prefix = kTenantPrefix;
    auto pool = std::make_unique<postgres::PgWriterPool>(config, size);
    for (int i = 0; i < count; ++i) tenants.push_back(stem + std::to_string(i));
    pool->PrepareTenants(tenants);
    return pool;
  }
  std::string dsn_;
};

TEST_F(StatementCache, EvictedStatementsArePreparedAgainAndTheCacheStaysWithinItsSize) {
  postgres::PgStore creator(dsn_, kOpsSchema, kTenantPrefix);
  const std::vector<std::string> tenants = {"sc1", "sc2", "sc3", "sc4", "sc5"};
  for (const auto& t : tenants) ASSERT_TRUE(creator.EnsureTenant(t).ok());

  // Room for three statements; every batch needs two (one tenant's messages and chats).
  postgres::PipelinedWriter writer(dsn_, kOpsSchema, kTenantPrefix, 3);
  uint64_t seq = 0;
  for (int round = 0; round < 3; ++round) {
    for (const auto& t : tenants) {
      ++seq;
      const std::vector<Mutation> batch = {Message(t, seq, "round " + std::to_string(round)),
                                           Chat(t, seq)};
      auto outcome = writer.Write(batch);
      // A statement evicted on the client but still on the server would fail to prepare
      // again ("already exists"); one deallocated but still listed would fail to execute.
      ASSERT_EQ(outcome.failure, postgres::PipelinedWriter::Failure::kNone)
          << t << " round " << round << ": " << outcome.message;
      EXPECT_EQ(outcome.results.at(0).outcome, pipeline::ApplyOutcome::kApplied);
      EXPECT_EQ(outcome.results.at(1).outcome, pipeline::ApplyOutcome::kApplied);
      EXPECT_LE(writer.PreparedCount(), 3u);
      EXPECT_EQ(TextOf(dsn_, t), "round " + std::to_string(round));
    }
  }
}

TEST_F(StatementCache, ABatchNeedingMoreStatementsThanTheCacheHoldsStillCommits) {
  postgres::PgStore creator(dsn_, kOpsSchema, kTenantPrefix);
  std::vector<Mutation> batch;
  for (int i = 0; i < 4; ++i) {
    const std::string t = "big" + std::to_string(i);
    ASSERT_TRUE(creator.EnsureTenant(t).ok());
    batch.push_back(Message(t, 1, "first"));
  }
  postgres::PipelinedWriter writer(dsn_, kOpsSchema, kTenantPrefix, 2);
  auto outcome = writer.Write(batch);
  ASSERT_EQ(outcome.failure, postgres::PipelinedWriter::Failure::kNone) << outcome.message;
  EXPECT_EQ(writer.PreparedCount(), 4u);  // kept until the next batch needs the room
  // The same tenants again: the batch's own statements are never the ones evicted.
  for (auto& m : batch) m = Message(m.company_id, 2, "again");
  outcome = writer.Write(batch);
  ASSERT_EQ(outcome.failure, postgres::PipelinedWriter::Failure::kNone) << outcome.message;
  EXPECT_EQ(writer.PreparedCount(), 4u);
  for (auto& m : batch) m = Message(m.company_id, 3, "second");
  batch.resize(1);
  outcome = writer.Write(batch);
  ASSERT_EQ(outcome.failure, postgres::PipelinedWriter::Failure::kNone) << outcome.message;
  EXPECT_LE(writer.PreparedCount(), 2u);
  EXPECT_EQ(TextOf(dsn_, "big0"), "second");
  EXPECT_EQ(TextOf(dsn_, "big3"), "again");
}

TEST_F(StatementCache, EachTenantKeepsOneConnectionAndTenantsAreSpreadEvenly) {
  std::vector<std::string> tenants;
  auto owned = PoolWithTenants(4, "home", 10, tenants);
  postgres::PgWriterPool& pool = *owned;

  std::map<std::string, size_t> first_home;
  std::map<size_t, int> per_connection;
  for (const auto& t : tenants) {
    first_home[t] = pool.ConnectionOf(t);
    ++per_connection[first_home[t]];
  }
  EXPECT_EQ(per_connection.size(), 4u);
  for (const auto& [connection, count] : per_connection) {
    EXPECT_TRUE(count == 2 || count == 3) << "connection " << connection << ": " << count;
  }
  // Batches that see the tenants in other orders and subsets keep them where they were. A
  // connection commits its share of a batch in one transaction: tenants share the
  // transaction id (xmin) of their rows exactly when they share a connection.
  for (int round = 0; round < 3; ++round) {
    std::vector<Mutation> batch;
    for (size_t i = 0; i < tenants.size(); ++i) {
      const std::string& t = tenants[(i * 3 + static_cast<size_t>(round)) % tenants.size()];
      if ((i + static_cast<size_t>(round)) % 4 == 0) continue;
      batch.push_back(Message(t, 10 + static_cast<uint64_t>(round), "r" + std::to_string(round)));
    }
    auto results = pool.Apply(batch);
    ASSERT_TRUE(results.ok()) << results.error().message;
    for (const auto& r : results.value()) EXPECT_EQ(r.outcome, pipeline::ApplyOutcome::kApplied);
    std::map<std::string, std::string> xmin;
    for (const auto& m : batch) {
      xmin[m.company_id] =
          QueryString(dsn_, "SELECT xmin::text FROM " + std::string(kTenantPrefix) + m.company_id +
                                ".messages")
              .value_or("");
    }
    for (const auto& [a, xa] : xmin) {
      for (const auto& [b, xb] : xmin) {
        EXPECT_EQ(xa == xb, first_home[a] == first_home[b])
            << "round " << round << ": " << a << " and " << b;
      }
    }
    for (const auto& t : tenants) EXPECT_EQ(pool.ConnectionOf(t), first_home[t]) << t;
  }
}

TEST_F(StatementCache, AConnectionsShareOfManyTenantsIsCommittedInTransactionsOfAHundredTenants) {
  // Each statement keeps its table and indexes locked until the commit, and PostgreSQL's lock
  // table is shared: one transaction per connection over thousands of tenants fails with
  // "out of shared memory". Each tenant's events still share one transaction.
  std::vector<std::string> tenants;
  auto owned = PoolWithTenants(2, "many", 250, tenants);
  postgres::PgWriterPool& pool = *owned;
  std::vector<Mutation> batch;
  batch.reserve(2 * tenants.size());
  for (const auto& t : tenants) batch.push_back(Message(t, 1, "one"));
  // clang-tidy 14 cannot read libstdc++ 12's std::ranges::reverse_view.
  for (auto it = tenants.rbegin(); it != tenants.rend(); ++it) {  // NOLINT(modernize-loop-convert)
    batch.push_back(Chat(*it, 2));
  }
  auto results = pool.Apply(batch);
  ASSERT_TRUE(results.ok()) << results.error().message;
  ASSERT_EQ(results.value().size(), batch.size());
  for (const auto& r : results.value()) EXPECT_EQ(r.outcome, pipeline::ApplyOutcome::kApplied);

  std::map<std::string, std::vector<std::string>> by_xmin;  // transaction -> its tenants
  for (const auto& t : tenants) {
    const std::string schema = std::string(kTenantPrefix) + t;
    const auto message = QueryString(dsn_, "SELECT xmin::text FROM " + schema + ".messages");
    const auto chat = QueryString(dsn_, "SELECT xmin::text FROM " + schema + ".chats");
    ASSERT_TRUE(message.has_value() && chat.has_value()) << t;
    EXPECT_EQ(*message, *chat) << t << ": its events were split across transactions";
    by_xmin[*message].push_back(t);
  }
  // 125 tenants per connection: two transactions each.
  EXPECT_EQ(by_xmin.size(), 4u);
  for (const auto& [xmin, members] : by_xmin) {
    EXPECT_LE(members.size(), postgres::PgWriterPool::kTenantsPerTransaction) << xmin;
    for (const auto& t : members) {
      EXPECT_EQ(pool.ConnectionOf(t), pool.ConnectionOf(members.front())) << t;
    }
  }
}

TEST_F(StatementCache, ARowTypeThatDiffersFromThisVersionStopsTheWritesWithAClearError) {
  // The batch statements name their parameters' row type (ops migration 0003) by oid. Types
  // another version created must never be written with: the writer says what differs and
  // writes nothing, as in an outage (nothing is exhausted for it).
  constexpr const char* kOtherOps = "events_ops_rowtypes";
  Exec(dsn_, std::string("DROP SCHEMA IF EXISTS ") + kOtherOps + " CASCADE");
  ASSERT_TRUE(postgres::MigrateOps(dsn_, kOtherOps).ok());
  postgres::PgStore creator(dsn_, kOtherOps, kTenantPrefix);
  ASSERT_TRUE(creator.EnsureTenant("rt1").ok());
  const std::vector<Mutation> batch = {Message("rt1", 1, "typed")};
  {
    postgres::PipelinedWriter writer(dsn_, kOtherOps, kTenantPrefix);
    auto outcome = writer.Write(batch);
    ASSERT_EQ(outcome.failure, postgres::PipelinedWriter::Failure::kNone) << outcome.message;
    EXPECT_EQ(TextOf(dsn_, "rt1"), "typed");
  }
  Exec(dsn_, std::string("ALTER TYPE ") + kOtherOps + ".rows_messages DROP ATTRIBUTE campaign");
  postgres::PipelinedWriter writer(dsn_, kOtherOps, kTenantPrefix);
  const std::vector<Mutation> next = {Message("rt1", 2, "not written")};
  auto outcome = writer.Write(next);
  EXPECT_EQ(outcome.failure, postgres::PipelinedWriter::Failure::kConnection);
  EXPECT_NE(outcome.message.find("type events_ops_rowtypes.rows_messages is ("), std::string::npos)
      << outcome.message;
  EXPECT_NE(outcome.message.find("run the ops migrations"), std::string::npos) << outcome.message;
  EXPECT_EQ(TextOf(dsn_, "rt1"), "typed");

  Exec(dsn_, std::string("DROP TYPE ") + kOtherOps + ".rows_messages");
  outcome = writer.Write(next);
  EXPECT_EQ(outcome.failure, postgres::PipelinedWriter::Failure::kConnection);
  EXPECT_NE(outcome.message.find("rows_messages does not exist"), std::string::npos)
      << outcome.message;
}

}  // namespace
}  // namespace evp::testing
