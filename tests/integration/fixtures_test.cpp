// Smoke tests of the server fixtures themselves (tests/support): if these fail, every other
// integration test would fail for reasons unrelated to the product.
#include <gtest/gtest.h>

#include <csignal>
#include <regex>
#include <set>

#include "support/db.hpp"
#include "support/nats_client.hpp"
#include "support/servers.hpp"

namespace evp::testing {
namespace {

TEST(Fixtures, UniqueNamesAreValidTenantIdsAndDistinct) {
  const std::regex tenant("^[a-z][a-z0-9_]{0,29}$");
  std::set<std::string> seen;
  for (std::string_view prefix : {"acme", "", "9lives", "Very-Long.Prefix With Spaces And More"}) {
    for (int i = 0; i < 50; ++i) {
      std::string name = UniqueName(prefix);
      EXPECT_TRUE(std::regex_match(name, tenant)) << name;
      EXPECT_TRUE(seen.insert(name).second) << "duplicate " << name;
    }
  }
}

TEST(Fixtures, FreeTcpPortReturnsUsablePort) {
  int port = FreeTcpPort();
  EXPECT_GT(port, 0);
  EXPECT_LT(port, 65536);
}

TEST(Fixtures, ChildProcessCapturesOutputEnvironmentAndExitCode) {
  ChildProcess child("/bin/sh", {"-c", "echo hello $EVP_FIXTURE_VALUE; exit 3"},
                     {{"EVP_FIXTURE_VALUE", "world"}});
  EXPECT_EQ(child.Wait(std::chrono::seconds(10)), 3);
  EXPECT_FALSE(child.Running());
  EXPECT_NE(child.Log().find("hello world"), std::string::npos) << child.Log();
}

TEST(Fixtures, ChildProcessReportsSignalsAndTimeouts) {
  ChildProcess child("sleep", {"30"}, {});
  EXPECT_TRUE(child.Running());
  EXPECT_EQ(child.Wait(std::chrono::milliseconds(50)), std::nullopt);
  child.Signal(SIGTERM);
  EXPECT_EQ(child.Wait(std::chrono::seconds(10)), 128 + SIGTERM);
}

TEST(Fixtures, NatsServerAcceptsJetStreamPublishes) {
  NatsServer nats;
  TestPublisher publisher(nats.Url());
  ASSERT_EQ(publisher.AddStream("SMOKE", {"smoke.>"}), "");

  PubResult first = publisher.Publish("smoke.one", R"({"hello":1})", "msg-1", {{"X-Test", "yes"}});
  ASSERT_TRUE(first.ok) << first.error;
  EXPECT_EQ(first.stream, "SMOKE");
  EXPECT_EQ(first.sequence, 1u);
  EXPECT_FALSE(first.duplicate);

  PubResult again = publisher.Publish("smoke.one", R"({"hello":1})", "msg-1");
  ASSERT_TRUE(again.ok) << again.error;
  EXPECT_TRUE(again.duplicate);

  PubResult refused = publisher.Publish("nostream.one", "x");
  EXPECT_FALSE(refused.ok);
  EXPECT_NE(refused.error.find("no responders"), std::string::npos) << refused.error;
}

TEST(Fixtures, NatsServerRestartsOnSamePortWithItsStore) {
  NatsServer nats;
  TestPublisher publisher(nats.Url());
  ASSERT_EQ(publisher.AddStream("RESTART", {"restart.>"}), "");
  ASSERT_TRUE(publisher.Publish("restart.a", "1").ok);

  nats.Stop();
  EXPECT_FALSE(nats.Running());
  nats.Start();
  // The publisher reconnects by itself; the stream and its message survived.
  PubResult after_stop;
  EXPECT_TRUE(WaitFor([&] {
    return (after_stop = publisher.Publish("restart.a", "2", "restart-2")).ok;
  })) << after_stop.error;
  EXPECT_EQ(after_stop.sequence, 2u);

  nats.Kill();
  nats.Start();
  PubResult after_kill;
  EXPECT_TRUE(WaitFor([&] {
    return (after_kill = publisher.Publish("restart.a", "3", "restart-3")).ok;
  })) << after_kill.error;
  EXPECT_EQ(after_kill.sequence, 3u);
}

TEST(Fixtures, SharedPostgresGivesThisProcessAFreshDatabase) {
  const std::string dsn = PostgresServer::Shared().Dsn();
  EXPECT_EQ(QueryInt(dsn, "select 1"), 1);
  auto database = QueryString(dsn, "select current_database()");
  ASSERT_TRUE(database.has_value());
  EXPECT_EQ(database->rfind("evp_test_", 0), 0u) << *database;
  EXPECT_EQ(QueryInt(dsn, "select count(*) from pg_tables where schemaname = 'public'"), 0);

  Exec(dsn, "create table smoke (id int primary key, body bytea)");
  Exec(dsn, "insert into smoke values (1, '\\x00ff41'::bytea)");
  EXPECT_TRUE(TableHasRows(dsn, "public.smoke"));
  EXPECT_EQ(QueryBytes(dsn, "select body from smoke"), std::string("\x00\xff\x41", 3));
  EXPECT_FALSE(TableExists(dsn, "public.missing"));
  EXPECT_EQ(TryQueryInt(dsn, "select count(*) from missing"), std::nullopt);
}

TEST(Fixtures, PrivatePostgresStopsAndStartsKeepingData) {
  auto pg = StartPrivatePostgres();
  ASSERT_TRUE(pg->Owned());
  const std::string dsn = pg->Dsn();
  Exec(dsn, "create table kept (v int); insert into kept values (42)");

  pg->Stop();
  EXPECT_FALSE(pg->Running());
  EXPECT_EQ(TryQueryInt(dsn, "select 1"), std::nullopt);

  pg->Start();
  EXPECT_TRUE(pg->Running());
  EXPECT_EQ(QueryInt(dsn, "select v from kept"), 42);
}

}  // namespace
}  // namespace evp::testing
