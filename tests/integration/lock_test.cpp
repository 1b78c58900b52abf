// A lock held elsewhere on one tenant's table (a migration, an operator's open transaction)
// must not hold up the other tenants (SPEC §6): the locked tenant's write gives up after
// DB_LOCK_TIMEOUT and its events are retried later, while the other tenants' commit. Real
// PostgreSQL; the lock is held by a transaction of the test's own.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "integration/stack.hpp"
#include "postgres/pg_store.hpp"
#include "support/db.hpp"
#include "support/mutations.hpp"
#include "support/servers.hpp"

namespace evp::testing {
namespace {

using nlohmann::json;
using pipeline::ApplyOutcome;

TEST(Locks, TheLockedTenantsEventsAreRetriedLaterAndTheOthersCommit) {
  const std::string dsn = PostgresServer::Shared().Dsn();
  auto migrated = postgres::MigrateOps(dsn, kOpsSchema);
  ASSERT_TRUE(migrated.ok()) << migrated.error();
  postgres::PgStore store(dsn, kOpsSchema, kTenantPrefix, 100, std::chrono::milliseconds(300));
  for (const char* t : {"lk1", "lk2", "lk3"}) ASSERT_TRUE(store.EnsureTenant(t).ok()) << t;

  HeldLock lock(dsn, "tenant_lk2.messages", "EXCLUSIVE");
  std::vector<handlers::Mutation> batch = {MessageUpsert("lk1", "m1", 1, "a"),
                                           MessageUpsert("lk3", "m3", 3, "c")};
  constexpr int kLocked = 10;
  for (int i = 0; i < kLocked; ++i) {
    batch.push_back(MessageUpsert("lk2", "l" + std::to_string(i), 10 + i, "b"));
  }
  const auto started = std::chrono::steady_clock::now();
  auto r = store.Apply(std::move(batch));
  const auto took = std::chrono::steady_clock::now() - started;
  ASSERT_TRUE(r.ok()) << "a lock is not an outage: " << r.error().message;
  ASSERT_EQ(r.value().size(), 2u + kLocked);
  EXPECT_EQ(r.value()[0].outcome, ApplyOutcome::kApplied);
  EXPECT_EQ(r.value()[1].outcome, ApplyOutcome::kApplied);
  for (int i = 0; i < kLocked; ++i) {
    EXPECT_EQ(r.value()[2 + i].outcome, ApplyOutcome::kRetry) << i;
  }
  EXPECT_NE(r.value()[2].message.find("55P03"), std::string::npos) << r.value()[2].message;
  // The locked tenant was given up on as a whole: writing its events one by one would have
  // waited the lock timeout once more for each of them (11 x 300 ms in all; this is 1).
  EXPECT_LT(took, std::chrono::milliseconds(300) * (kLocked - 2))
      << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  EXPECT_EQ(QueryInt(dsn, "SELECT count(*) FROM tenant_lk1.messages"), 1);
  EXPECT_EQ(QueryInt(dsn, "SELECT count(*) FROM tenant_lk3.messages"), 1);
  EXPECT_EQ(QueryInt(dsn, "SELECT count(*) FROM tenant_lk2.messages"), 0);

  lock.Release();
  auto again =
      store.Apply({MessageUpsert("lk2", "l0", 10, "b"), MessageUpsert("lk2", "l1", 11, "b")});
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(again.value()[0].outcome, ApplyOutcome::kApplied);
  EXPECT_EQ(again.value()[1].outcome, ApplyOutcome::kApplied);
}

std::string Chat(const std::string& id) {
  return json{{"chat_id", id}, {"jid", id + "@s"}, {"phone_number", "+1"}, {"push_name", "p"}}
      .dump();
}

// What the realtime consumer's gauges say it has not settled yet: pending (in the stream,
// not delivered) plus ack pending (delivered, not acknowledged); -1 when one is missing.
double RealtimeUnsettled(const Stack& stack) {
  const std::string text = Stack::HttpGet(stack.ProcessorPort(), "/metrics");
  double sum = 0;
  for (const char* gauge : {"evp_consumer_pending_messages", "evp_consumer_ack_pending_messages"}) {
    const std::string series =
        "\n" + std::string(gauge) + "{consumer=\"events-processor-realtime\"} ";
    const size_t at = text.find(series);
    if (at == std::string::npos) return -1;
    sum += std::stod(text.substr(at + series.size()));
  }
  return sum;
}

TEST(Locks, OtherTenantsAreWrittenWhileOneTenantsTableIsLocked) {
  Stack stack({{"DB_LOCK_TIMEOUT", "1s"}, {"DB_POOL_SIZE", "1"}});
  const std::string locked = UniqueName("lka");
  const std::string free = UniqueName("lkb");
  for (const auto& t : {locked, free}) {
    ASSERT_TRUE(stack.Publish("v1.chats.upsert." + t, Chat("c1")).ok);
    ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + t + ".chats", 1));
  }
  // EXCLUSIVE blocks writes, not the test's reads.
  HeldLock lock(stack.Dsn(), "tenant_" + locked + ".chats", "EXCLUSIVE");
  ASSERT_TRUE(stack.Publish("v1.chats.upsert." + locked, Chat("c2")).ok);
  ASSERT_TRUE(stack.Publish("v1.chats.upsert." + free, Chat("c2")).ok);
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + free + ".chats", 2))
      << "the other tenant waited for the lock";
  EXPECT_EQ(stack.Count("SELECT count(*) FROM tenant_" + locked + ".chats"), 1);
  lock.Release();
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + locked + ".chats", 2,
                              std::chrono::seconds(60)))
      << "the locked tenant's event is applied once the lock is gone";
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events"), 0);
}

TEST(Locks, TheLagGaugeMovesWhileAWriteWaits) {
  // No lock timeout: the write waits as long as the lock is held.
  Stack stack(std::map<std::string, std::string>{{"DB_LOCK_TIMEOUT", "0"}});
  const std::string t = UniqueName("lkg");
  ASSERT_TRUE(stack.Publish("v1.chats.upsert." + t, Chat("c1")).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + t + ".chats", 1));
  HeldLock lock(stack.Dsn(), "tenant_" + t + ".chats", "EXCLUSIVE");
  ASSERT_TRUE(stack.Publish("v1.chats.upsert." + t, Chat("c2")).ok);
  // The waiting write is the processor's: its connection shows in pg_locks, not granted.
  ASSERT_TRUE(
      WaitFor([&] { return stack.Count("SELECT count(*) FROM pg_locks WHERE NOT granted") >= 1; },
              std::chrono::seconds(20)));
  for (int i = 3; i < 13; ++i) {
    ASSERT_TRUE(stack.Publish("v1.chats.upsert." + t, Chat("c" + std::to_string(i))).ok);
  }
  // The waiting event and the ten after it (pending, or pulled ahead and not yet acked).
  double unsettled = -1;
  EXPECT_TRUE(WaitFor(
      [&] {
        unsettled = RealtimeUnsettled(stack);
        return unsettled == 11;
      },
      std::chrono::seconds(20)))
      << "the lag gauges stayed at " << unsettled << " in all";
  lock.Release();
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + t + ".chats", 12));
}

}  // namespace
}  // namespace evp::testing
