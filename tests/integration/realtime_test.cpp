// End to end on real servers: realtime events published to JetStream land in the tenant's
// PostgreSQL schema with the semantics of SPEC §6 and §11.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "integration/stack.hpp"

namespace evp::testing {
namespace {

using nlohmann::json;

int64_t Now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

TEST(Realtime, EveryRealtimeTypeLandsInTheTenantTables) {
  Stack stack;
  const std::string t = UniqueName("acme");
  const std::string s = "tenant_" + t;
  const int64_t now = Now();
  ASSERT_TRUE(stack
                  .Publish("v1.chats.upsert." + t, json{{"chat_id", "c1"},
                                                        {"jid", "j1"},
                                                        {"phone_number", "+1"},
                                                        {"unread_count", 2},
                                                        {"conversation_timestamp", now - 10},
                                                        {"last_message", {{"text", "hi"}}}}
                                                       .dump())
                  .ok);
  ASSERT_TRUE(stack
                  .Publish("v1.messages.upsert." + t, json{{"message_id", "m1"},
                                                           {"chat_id", "c1"},
                                                           {"jid", "j1"},
                                                           {"flow", "OUT"},
                                                           {"message_text", "hello"},
                                                           {"message_timestamp", now - 10}}
                                                          .dump())
                  .ok);
  ASSERT_TRUE(stack
                  .Publish("v1.contacts.upsert." + t, json{{"phone_number", "+1"},
                                                           {"agent_id", "a1"},
                                                           {"push_name", "Ann"},
                                                           {"tags", {"vip", "x"}}}
                                                          .dump())
                  .ok);
  ASSERT_TRUE(
      stack
          .Publish("v1.connection.update." + t,
                   json{{"agent_id", "a1"}, {"status", "connected"}, {"version", "2.1"}}.dump())
          .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".chats", 1));
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 1));
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".contacts", 1));
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".agents", 1));
  // Updates of existing rows.
  ASSERT_TRUE(
      stack
          .Publish(
              "v1.chats.update." + t,
              json{{"chat_id", "c1"}, {"unread_count", 0}, {"conversation_timestamp", now}}.dump())
          .ok);
  ASSERT_TRUE(
      stack
          .Publish("v1.messages.update." + t,
                   json{{"message_id", "m1"}, {"status", "read"}, {"timestamp", now}}.dump())
          .ok);
  ASSERT_TRUE(
      stack
          .Publish("v1.contacts.update." + t,
                   json{{"phone_number", "+1"}, {"agent_id", "a1"}, {"notes", "called"}}.dump())
          .ok);
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".chats WHERE unread_count = 0", 1));
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages WHERE status = 'read'", 1));
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".contacts WHERE notes = 'called'", 1));
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT array_to_string(tags, ',') FROM " + s + ".contacts"),
            "vip,x");
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT version FROM " + s + ".agents"), "2.1");
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT company_id FROM " + s + ".messages"), t);
  EXPECT_EQ(
      QueryString(stack.Dsn(),
                  "SELECT schema_name FROM events_ops.tenants WHERE company_id = '" + t + "'"),
      s);
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events"), 0);
}

TEST(Realtime, EachServiceNamesItsDatabaseSessions) {
  Stack stack;
  const std::string t = UniqueName("appname");
  ASSERT_TRUE(stack
                  .Publish("v1.chats.upsert." + t,
                           json{{"chat_id", "c1"}, {"jid", "j1"}, {"phone_number", "+1"}}.dump())
                  .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + t + ".chats", 1));
  // pg_stat_activity tells an operator which service holds which connection.
  for (const char* name : {"events-processor", "dlq-worker"}) {
    EXPECT_TRUE(stack.WaitCount(
        std::string("SELECT least(count(*), 1) FROM pg_stat_activity WHERE datname = "
                    "current_database() AND application_name = '") +
            name + "'",
        1))
        << name;
  }
}

TEST(Realtime, PartialUpdatesTouchOnlyTheirFields) {
  Stack stack;
  const std::string t = UniqueName("part");
  const std::string s = "tenant_" + t;
  const int64_t now = Now();
  ASSERT_TRUE(stack
                  .Publish("v1.chats.upsert." + t, json{{"chat_id", "c1"},
                                                        {"jid", "j1"},
                                                        {"phone_number", "+1"},
                                                        {"push_name", "Bob"},
                                                        {"unread_count", 5},
                                                        {"is_group", false},
                                                        {"conversation_timestamp", now - 100},
                                                        {"last_message", {{"t", 1}}}}
                                                       .dump())
                  .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".chats", 1));
  ASSERT_TRUE(
      stack.Publish("v1.chats.update." + t, json{{"chat_id", "c1"}, {"unread_count", 9}}.dump())
          .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".chats WHERE unread_count = 9", 1));
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT push_name FROM " + s + ".chats"), "Bob");
  EXPECT_EQ(
      QueryString(stack.Dsn(),
                  "SELECT jid || phone_number || is_group::text || (last_message->>'t') FROM " + s +
                      ".chats"),
      "j1+1false1");
}

TEST(Realtime, ReorderedChatUpdatesKeepTheNewestState) {
  Stack stack;
  const std::string t = UniqueName("ord");
  const std::string s = "tenant_" + t;
  const int64_t now = Now();
  auto chat = [&](int64_t ts, const std::string& name) {
    return json{{"chat_id", "c1"},
                {"jid", "j"},
                {"phone_number", "+1"},
                {"push_name", name},
                {"conversation_timestamp", ts}}
        .dump();
  };
  ASSERT_TRUE(stack.Publish("v1.chats.upsert." + t, chat(now, "newest")).ok);
  ASSERT_TRUE(stack.Publish("v1.chats.upsert." + t, chat(now - 50, "older")).ok);
  ASSERT_TRUE(stack
                  .Publish("v1.chats.update." + t, json{{"chat_id", "c1"},
                                                        {"unread_count", 7},
                                                        {"conversation_timestamp", now - 20}}
                                                       .dump())
                  .ok);
  // A marker published last tells us everything before it was processed.
  ASSERT_TRUE(stack
                  .Publish("v1.chats.upsert." + t,
                           json{{"chat_id", "marker"}, {"jid", "j"}, {"phone_number", "+2"}}.dump())
                  .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".chats WHERE chat_id = 'marker'", 1));
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT push_name FROM " + s + ".chats WHERE chat_id = 'c1'"),
            "newest");
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT coalesce(unread_count::text, 'null') FROM " + s +
                                         ".chats WHERE chat_id = 'c1'"),
            "null");
  EXPECT_EQ(QueryInt(stack.Dsn(),
                     "SELECT conversation_timestamp FROM " + s + ".chats WHERE chat_id = 'c1'"),
            now);
}

TEST(Realtime, UpdateArrivingBeforeItsUpsertIsAppliedWithinTheGrace) {
  Stack stack(std::map<std::string, std::string>{{"ORDERING_GRACE", "10s"}});
  const std::string t = UniqueName("early");
  const std::string s = "tenant_" + t;
  ASSERT_TRUE(
      stack
          .Publish("v1.messages.update." + t, json{{"message_id", "m1"}, {"status", "read"}}.dump())
          .ok);
  // The update is retried while its message does not exist yet.
  ASSERT_TRUE(stack
                  .Publish("v1.chats.upsert." + t,
                           json{{"chat_id", "c"}, {"jid", "j"}, {"phone_number", "+1"}}.dump())
                  .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".chats", 1));
  ASSERT_TRUE(stack
                  .Publish("v1.messages.upsert." + t, json{{"message_id", "m1"},
                                                           {"chat_id", "c"},
                                                           {"jid", "j"},
                                                           {"flow", "OUT"},
                                                           {"status", "sent"},
                                                           {"message_timestamp", Now() - 5}}
                                                          .dump())
                  .ok);
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages WHERE status = 'read'", 1));
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events"), 0);
}

TEST(Realtime, UpdateForARowThatNeverArrivesIsExhaustedAfterTheGrace) {
  Stack stack(std::map<std::string, std::string>{{"ORDERING_GRACE", "1s"}});
  const std::string t = UniqueName("never");
  const std::string body = json{{"chat_id", "ghost"}, {"unread_count", 1}}.dump();
  ASSERT_TRUE(stack.Publish("v1.chats.update." + t, body).ok);
  ASSERT_TRUE(
      stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events WHERE reason LIKE "
                      "'not_found_after_grace: %'",
                      1));
  EXPECT_EQ(QueryBytes(stack.Dsn(), "SELECT original_payload FROM events_ops.exhausted_events"),
            body);
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT error_class FROM events_ops.exhausted_events"),
            "fatal");
}

TEST(Realtime, MessageForAnUnknownChatIsStored) {
  Stack stack;
  const std::string t = UniqueName("nochat");
  ASSERT_TRUE(
      stack
          .Publish(
              "v1.messages.upsert." + t,
              json{{"message_id", "m1"}, {"chat_id", "nope"}, {"jid", "j"}, {"flow", "OUT"}}.dump())
          .ok);
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + t + ".messages", 1));
}

TEST(Realtime, FirstInboundMessageOnboardsTheContactExactlyOnce) {
  Stack stack;
  const std::string t = UniqueName("onb");
  const std::string s = "tenant_" + t;
  auto msg = [&](const std::string& id, const json& campaign) {
    json m{{"message_id", id}, {"chat_id", "c"},   {"jid", "j"},
           {"flow", "IN"},     {"agent_id", "a1"}, {"from_phone", "+551199"}};
    if (!campaign.is_null()) m["campaign"] = campaign;
    return m.dump();
  };
  ASSERT_TRUE(stack
                  .Publish("v1.messages.upsert." + t, msg("m1", json{{"is_campaign", true},
                                                                     {"origin", "BlackFriday"},
                                                                     {"tags", {"promo"}}}))
                  .ok);
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, msg("m2", nullptr)).ok);
  ASSERT_TRUE(stack
                  .Publish("v1.messages.upsert." + t, json{{"message_id", "m3"},
                                                           {"chat_id", "c"},
                                                           {"jid", "j"},
                                                           {"flow", "IN"},
                                                           {"agent_id", "a1"},
                                                           {"from_phone", "+000"}}
                                                          .dump())
                  .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 3));
  EXPECT_EQ(stack.Count("SELECT count(*) FROM " + s + ".onboarding_log"), 2);
  EXPECT_EQ(
      stack.Count("SELECT count(*) FROM " + s + ".onboarding_log WHERE phone_number = '+551199'"),
      1);
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT origin || ':' || array_to_string(tags, ',') FROM " +
                                         s + ".contacts WHERE phone_number = '+551199'"),
            "BlackFriday:promo");
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT origin || ':' || array_to_string(tags, ',') FROM " +
                                         s + ".contacts WHERE phone_number = '+000'"),
            "DirectChat:Onboarded");
}

TEST(Realtime, OnboardingKeepsEveryCampaignTagAsSent) {
  // The batch writer sends onboarding rows as binary records with a text[] field: tags with
  // separators, quotes, braces, backslashes, non-ASCII text or nothing at all come out as
  // sent, and an empty tag list stays empty.
  Stack stack;
  const std::string t = UniqueName("tags");
  const std::string s = "tenant_" + t;
  const json tags =
      json::array({"promo", "a,b", "q\"uote", "{brace}", "back\\slash", "ünï 😀", "", "NULL"});
  auto msg = [&](const std::string& id, const std::string& phone, const json& campaign_tags) {
    return json{{"message_id", id},
                {"chat_id", "c"},
                {"jid", "j"},
                {"flow", "IN"},
                {"agent_id", "a1"},
                {"from_phone", phone},
                {"campaign", {{"is_campaign", true}, {"tags", campaign_tags}}}}
        .dump();
  };
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, msg("m1", "+1", tags)).ok);
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, msg("m2", "+2", json::array())).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".onboarding_log", 2));
  for (const std::string table : {"contacts", "onboarding_log"}) {
    EXPECT_EQ(json::parse(QueryString(stack.Dsn(), "SELECT to_jsonb(tags)::text FROM " + s + "." +
                                                       table + " WHERE phone_number = '+1'")
                              .value_or("null")),
              tags)
        << table;
    EXPECT_EQ(QueryString(stack.Dsn(), "SELECT cardinality(tags) FROM " + s + "." + table +
                                           " WHERE phone_number = '+2'"),
              "0")
        << table;
  }
}

TEST(Realtime, ExistingContactGetsNoOnboardingRow) {
  Stack stack;
  const std::string t = UniqueName("known");
  const std::string s = "tenant_" + t;
  ASSERT_TRUE(
      stack
          .Publish("v1.contacts.upsert." + t,
                   json{{"phone_number", "+1"}, {"agent_id", "a1"}, {"origin", "CRM"}}.dump())
          .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".contacts", 1));
  ASSERT_TRUE(stack
                  .Publish("v1.messages.upsert." + t, json{{"message_id", "m1"},
                                                           {"chat_id", "c"},
                                                           {"jid", "j"},
                                                           {"flow", "IN"},
                                                           {"agent_id", "a1"},
                                                           {"from_phone", "+1"}}
                                                          .dump())
                  .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 1));
  EXPECT_EQ(stack.Count("SELECT count(*) FROM " + s + ".onboarding_log"), 0);
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT origin FROM " + s + ".contacts"), "CRM");
}

TEST(Realtime, LargeValidMessageOf600KbIsAccepted) {
  Stack stack;
  const std::string t = UniqueName("big");
  json m{{"message_id", "big1"},
         {"chat_id", "c"},
         {"jid", "j"},
         {"flow", "OUT"},
         {"message_obj", {{"blob", std::string(600 * 1024, 'x')}}}};
  const std::string body = m.dump();
  ASSERT_GT(body.size(), 600u * 1024);
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, body).ok);
  EXPECT_TRUE(stack.WaitCount(
      "SELECT count(*) FROM tenant_" + t + ".messages WHERE length(message_obj->>'blob') = 614400",
      1));
}

TEST(Realtime, NumbersInFreeFormObjectsAreStoredAsSent) {
  Stack stack;
  const std::string t = UniqueName("num");
  const std::string obj =
      R"({"big": 123456789012345678901234567890, "prec": 3.141592653589793238462643383279})";
  ASSERT_TRUE(stack
                  .Publish("v1.messages.upsert." + t,
                           R"({"message_id": "n1", "chat_id": "c", "jid": "j", "flow": "OUT", )"
                           R"("message_obj": )" +
                               obj + "}")
                  .ok);
  const std::string item =
      R"({"message_id": "n2", "chat_id": "c", "jid": "j", "flow": "OUT", "message_obj": )" + obj +
      "}";
  ASSERT_TRUE(stack.Publish("v1.history.messages." + t, R"({"messages": [)" + item + "]}").ok);
  const std::string s = "tenant_" + t;
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 2));
  // jsonb keeps numbers as numeric: compare with what PostgreSQL makes of the sent text.
  EXPECT_EQ(stack.Count("SELECT count(*) FROM " + s + ".messages WHERE message_obj = '" + obj +
                        "'::jsonb AND message_obj->>'big' = '123456789012345678901234567890'"),
            2);
}

TEST(Realtime, InjectionStringsAreStoredVerbatim) {
  Stack stack;
  const std::string t = UniqueName("inj");
  const std::string evil = "'); DROP TABLE messages; -- \" \\ $1 {\"$ne\":1} ünïcødé 🚀";
  ASSERT_TRUE(stack
                  .Publish("v1.messages.upsert." + t, json{{"message_id", evil},
                                                           {"chat_id", "c"},
                                                           {"jid", "j"},
                                                           {"flow", "OUT"},
                                                           {"message_text", evil}}
                                                          .dump())
                  .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + t + ".messages", 1));
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT message_text FROM tenant_" + t + ".messages"), evil);
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT message_id FROM tenant_" + t + ".messages"), evil);
}

TEST(Realtime, RedeliveredAndRepublishedEventsChangeNothing) {
  Stack stack;
  const std::string t = UniqueName("dup");
  const std::string s = "tenant_" + t;
  const int64_t now = Now();
  const std::string body = json{
      {"chat_id", "c1"},
      {"jid", "j"},
      {"phone_number", "+1"},
      {"unread_count", 3},
      {"conversation_timestamp",
       now}}.dump();
  ASSERT_TRUE(stack.Publish("v1.chats.upsert." + t, body, "same-id").ok);
  const auto again = stack.Publish("v1.chats.upsert." + t, body, "same-id");
  EXPECT_TRUE(again.duplicate);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".chats", 1));
  const auto before =
      QueryString(stack.Dsn(), "SELECT row_to_json(c)::text FROM " + s + ".chats c");
  // The same event under a new id (after the dedup window, or from a retrying publisher).
  ASSERT_TRUE(stack.Publish("v1.chats.upsert." + t, body, "other-id").ok);
  ASSERT_TRUE(stack
                  .Publish("v1.chats.upsert." + t,
                           json{{"chat_id", "marker"}, {"jid", "j"}, {"phone_number", "+2"}}.dump())
                  .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".chats", 2));
  const auto after = QueryString(
      stack.Dsn(), "SELECT row_to_json(c)::text FROM " + s + ".chats c WHERE chat_id = 'c1'");
  ASSERT_TRUE(before && after);
  // Only bookkeeping may differ: the business columns are identical.
  auto business = [](const std::string& row) {
    auto j = json::parse(row);
    for (const char* k : {"ver_seq", "updated_at", "created_at"}) j.erase(k);
    return j;
  };
  EXPECT_EQ(business(*before), business(*after));
}

TEST(Realtime, SubjectNoStreamCapturesIsRefusedAtPublishTime) {
  Stack stack;
  EXPECT_FALSE(stack.Publish("v1.foo.bar.acme", "{}").ok);
  EXPECT_FALSE(stack.Publish("v2.chats.upsert.acme", "{}").ok);
}

TEST(Realtime, HealthReadinessAndMetricsAreServed) {
  Stack stack;
  int status = 0;
  EXPECT_EQ(Stack::HttpGet(stack.ProcessorPort(), "/healthz", &status), "ok\n");
  EXPECT_EQ(status, 200);
  Stack::HttpGet(stack.WorkerPort(), "/healthz", &status);
  EXPECT_EQ(status, 200);
  const std::string t = UniqueName("met");
  ASSERT_TRUE(stack
                  .Publish("v1.chats.upsert." + t,
                           json{{"chat_id", "c"}, {"jid", "j"}, {"phone_number", "+1"}}.dump())
                  .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + t + ".chats", 1));
  std::string metrics;
  ASSERT_TRUE(WaitFor([&] {
    metrics = Stack::HttpGet(stack.ProcessorPort(), "/metrics");
    return metrics.find(R"(evp_events_total{outcome="applied",type="chats.upsert"} 1)") !=
           std::string::npos;
  })) << metrics;
  EXPECT_NE(metrics.find("evp_batch_duration_seconds_bucket"), std::string::npos);
  EXPECT_EQ(metrics.find(t), std::string::npos) << "no company_id label by default";
  EXPECT_NE(Stack::HttpGet(stack.WorkerPort(), "/metrics").find("evp_build_info"),
            std::string::npos);
}

TEST(Startup, InvalidConfigurationExitsWithCode2AndAClearMessage) {
  ChildProcess p(BinaryPath("events-processor"), {},
                 {{"POSTGRES_DSN", "postgresql://x@127.0.0.1:1/x"},
                  {"BATCH_SIZE", "zero"},
                  {"ORDERING_GRACE", "6 parsecs"}});
  EXPECT_EQ(p.Wait(std::chrono::seconds(10)), 2);
  EXPECT_NE(p.Log().find("BATCH_SIZE='zero': must be an integer"), std::string::npos) << p.Log();
  EXPECT_NE(p.Log().find("ORDERING_GRACE"), std::string::npos);
  ChildProcess w(BinaryPath("dlq-worker"), {}, {{"POSTGRES_DSN", ""}});
  EXPECT_EQ(w.Wait(std::chrono::seconds(10)), 2);
  EXPECT_NE(w.Log().find("POSTGRES_DSN"), std::string::npos) << w.Log();
  // A DSN libpq cannot parse is a configuration error, not a database that is "not ready".
  ChildProcess d(BinaryPath("events-processor"), {},
                 {{"POSTGRES_DSN", "postgresql://app:s3cret@db:99999/events"}});
  EXPECT_EQ(d.Wait(std::chrono::seconds(10)), 2);
  EXPECT_NE(d.Log().find("POSTGRES_DSN=****: invalid port number"), std::string::npos) << d.Log();
  EXPECT_EQ(d.Log().find("s3cret"), std::string::npos) << d.Log();
  // So is a value libpq checks only when it connects, and a credentials file that is missing.
  ChildProcess v(BinaryPath("dlq-worker"), {},
                 {{"POSTGRES_DSN", "postgresql://app:s3cret@127.0.0.1:1/events?sslmode=requir"},
                  {"NATS_CREDS_FILE", "/nonexistent/app.creds"}});
  EXPECT_EQ(v.Wait(std::chrono::seconds(10)), 2);
  EXPECT_NE(v.Log().find(R"(POSTGRES_DSN=****: invalid sslmode value: "requir")"),
            std::string::npos)
      << v.Log();
  EXPECT_NE(v.Log().find("NATS_CREDS_FILE='/nonexistent/app.creds': cannot be read"),
            std::string::npos)
      << v.Log();
  EXPECT_EQ(v.Log().find("s3cret"), std::string::npos) << v.Log();
}

TEST(Startup, AServerThatIsNotReadyIsRetriedWithOneLogLinePerTry) {
  // libpq's message ends with a newline; in the text format it left a blank line each time.
  NatsServer nats;
  ChildProcess w(BinaryPath("dlq-worker"), {},
                 {{"POSTGRES_DSN", "postgresql://app@127.0.0.1:1/events"},
                  {"NATS_URL", nats.Url()},
                  {"LOG_FORMAT", "text"},
                  {"HTTP_PORT", "0"}});
  ASSERT_TRUE(WaitFor([&] { return w.Log().find("PostgreSQL not ready") != std::string::npos; }))
      << w.Log();
  w.Signal(SIGTERM);
  EXPECT_EQ(w.Wait(std::chrono::seconds(10)), 0) << w.Log();
  EXPECT_EQ(w.Log().find("\n\n"), std::string::npos) << w.Log();
}

}  // namespace
}  // namespace evp::testing

namespace evp::testing {
namespace {

TEST(Metrics, LiveMetricsOfBothBinariesPassPromtoolCheckMetrics) {
  Stack stack;
  const std::string t = UniqueName("prom");
  ASSERT_TRUE(stack.Publish("v1.chats.upsert." + t, "{bad").ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events", 1));
  for (int port : {stack.ProcessorPort(), stack.WorkerPort()}) {
    const std::string text = Stack::HttpGet(port, "/metrics");
    ASSERT_FALSE(text.empty());
    const std::string path = ::testing::TempDir() + "/metrics-" + std::to_string(port) + ".txt";
    {
      std::ofstream out(path);
      out << text;
    }
    // promtool reads the exposition from stdin: run it through a shell redirect.
    ChildProcess check("/bin/sh", {"-c", "promtool check metrics < " + path}, {});
    EXPECT_EQ(check.Wait(std::chrono::seconds(30)), 0) << check.Log();
  }
}

}  // namespace
}  // namespace evp::testing
