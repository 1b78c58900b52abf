// A PostgreSQL restart closes every connection of the store; the store notices at its next use.
// It must then open a new one and carry on, so that a restart costs no event a
// delivery (processor) or an attempt (DLQ worker). Real PostgreSQL; the backends are ended
// with pg_terminate_backend, as a restart ends them.
#include <gtest/gtest.h>

#include <csignal>

#include "app/startup.hpp"
#include "postgres/pg_store.hpp"
#include "support/db.hpp"
#include "support/mutations.hpp"
#include "support/servers.hpp"

namespace evp::testing {
namespace {

constexpr const char* kApp = "evp_reconnect_test";

DeadLetter Letter(uint64_t seq) {
  DeadLetter dl;
  dl.original = "{not json";
  dl.source_subject = "v1.chats.upsert.rc1";
  dl.company_id = "rc1";
  dl.error_class = ErrorClass::kFatal;
  dl.reason = "malformed_json: invalid JSON";
  dl.attempts = 1;
  dl.first_failed_ms = dl.last_failed_ms = 1'700'000'000'000;
  dl.source_stream = "EVENTS";
  dl.stream_seq = seq;
  dl.published_ns = 1'700'000'000'000'000'000;
  return dl;
}

class Reconnect : public ::testing::Test {
 protected:
  void SetUp() override {
    admin_ = PostgresServer::Shared().Dsn();
    dsn_ = admin_ + "?application_name=" + kApp;
    auto migrated = postgres::MigrateOps(admin_, kOpsSchema);
    ASSERT_TRUE(migrated.ok()) << migrated.error();
  }
  // Ends the store's backends, as a restart does, and waits until they are gone.
  void CloseConnectionsOnTheServer(int64_t expected) {
    const std::string mine = "FROM pg_stat_activity WHERE application_name = '" +
                             std::string(kApp) + "' AND datname = current_database()";
    EXPECT_EQ(QueryInt(admin_, "SELECT count(pg_terminate_backend(pid)) " + mine), expected);
    EXPECT_TRUE(WaitFor([&] { return QueryInt(admin_, "SELECT count(*) " + mine) == 0; },
                        std::chrono::seconds(10)));
  }
  std::string admin_;
  std::string dsn_;
};

// A server that keeps the connection open but stops answering (hung, swapped out) must not
// read as ready: the probe's ping then hangs, so readiness looks at when a ping last succeeded.
TEST_F(Reconnect, AProbeWhosePingHangsReportsTheDatabaseNotReadyUntilItAnswers) {
  constexpr const char* kProbeApp = "evp_probe_test";
  Config config;
  config.postgres_dsn = admin_ + "?application_name=" + kProbeApp;
  config.ops_schema = kOpsSchema;
  app::DatabaseProbe probe(config, std::chrono::milliseconds(200));
  ASSERT_TRUE(WaitFor([&] { return probe.ok(); }, std::chrono::seconds(20)));
  const auto pid = static_cast<pid_t>(
      QueryInt(admin_, "SELECT pid FROM pg_stat_activity WHERE application_name = '" +
                           std::string(kProbeApp) + "' AND datname = current_database()"));
  ASSERT_GT(pid, 0);
  // The probe's backend stops answering; it is let go again whatever happens below.
  ASSERT_EQ(kill(pid, SIGSTOP), 0);
  struct Resume {
    pid_t pid;
    ~Resume() { kill(pid, SIGCONT); }
  } resume{pid};
  EXPECT_TRUE(WaitFor([&] { return !probe.ok(); }, std::chrono::seconds(20)))
      << "still ready with a database that does not answer";
  kill(pid, SIGCONT);
  EXPECT_TRUE(WaitFor([&] { return probe.ok(); }, std::chrono::seconds(20)));
}

TEST_F(Reconnect, AStoreWritesOnAfterTheServerClosedItsConnections) {
  postgres::PgStore store(dsn_, kOpsSchema, kTenantPrefix);
  ASSERT_TRUE(store.EnsureTenant("rc1").ok());
  auto first = store.Apply({MessageUpsert("rc1", "m1", 1, "before")});
  ASSERT_TRUE(first.ok()) << first.error().message;
  ASSERT_TRUE(store.RecordExhausted(Letter(1), "malformed_json: x").ok());

  // Both connections (the batch writer's and the other one) are gone.
  CloseConnectionsOnTheServer(2);
  auto applied = store.Apply({MessageUpsert("rc1", "m1", 2, "after")});
  ASSERT_TRUE(applied.ok()) << "a closed connection is not an outage: " << applied.error().message;
  ASSERT_EQ(applied.value().size(), 1u);
  EXPECT_EQ(applied.value()[0].outcome, pipeline::ApplyOutcome::kApplied);
  EXPECT_EQ(QueryString(admin_, "SELECT message_text FROM tenant_rc1.messages"), "after");

  CloseConnectionsOnTheServer(1);  // only the batch writer's was opened again
  auto ensured = store.EnsureTenant("rc2");
  EXPECT_TRUE(ensured.ok()) << ensured.error().message;
  EXPECT_TRUE(TableExists(admin_, "tenant_rc2.messages"));

  CloseConnectionsOnTheServer(1);
  auto recorded = store.RecordExhausted(Letter(2), "malformed_json: x");
  ASSERT_TRUE(recorded.ok()) << recorded.error().message;
  EXPECT_TRUE(recorded.value());

  // The DLQ worker's look-up before a retry (is the event exhausted already?).
  CloseConnectionsOnTheServer(1);
  auto seen = store.IsRecorded(Letter(2).IdempotencyKey());
  ASSERT_TRUE(seen.ok()) << seen.error().message;
  EXPECT_TRUE(seen.value());
  auto unseen = store.IsRecorded(Letter(3).IdempotencyKey());
  ASSERT_TRUE(unseen.ok()) << unseen.error().message;
  EXPECT_FALSE(unseen.value());

  CloseConnectionsOnTheServer(1);
  EXPECT_TRUE(store.Ping()) << "readiness does not flap after a restart";
}

}  // namespace
}  // namespace evp::testing
