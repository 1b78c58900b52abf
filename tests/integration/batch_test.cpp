// Batched writes on real servers: big history imports, poison isolation inside one batch,
// several events for one key in one batch, and idempotent re-sends.
#include <gtest/gtest.h>

#include <cctype>
#include <csignal>
#include <nlohmann/json.hpp>

#include "integration/stack.hpp"
#include "validation/decoder.hpp"

namespace evp::testing {
namespace {

using nlohmann::json;
using Env = std::map<std::string, std::string>;

int64_t Now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

json Message(const std::string& id, const std::string& text = "hi") {
  return json{
      {"message_id", id}, {"chat_id", "c"}, {"jid", "j"}, {"flow", "OUT"}, {"message_text", text}};
}

// A second processor on the stack's servers, with `extra` settings (the stack's own one is
// stopped first, so that queued events reach this one in one batch).
ChildProcess StartProcessor(const Stack& stack, const Env& extra) {
  auto env = stack.Env();
  env["HTTP_PORT"] = std::to_string(FreeTcpPort());
  for (const auto& [k, v] : extra) env[k] = v;
  return {BinaryPath("events-processor"), {}, env};
}

TEST(Batch, HistoryBatchOfFiveThousandItemsLandsCompletely) {
  Stack stack;
  const std::string t = UniqueName("bulk");
  json items = json::array();
  for (int i = 0; i < 5000; ++i) items.push_back(Message("h" + std::to_string(i), "imported"));
  const std::string body = json{{"messages", items}}.dump();
  ASSERT_LT(body.size(), 921600u);
  ASSERT_TRUE(stack.Publish("v1.history.messages." + t, body).ok);
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + t + ".messages", 5000,
                              std::chrono::seconds(60)));
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events"), 0);
  // History messages never onboard contacts.
  EXPECT_EQ(stack.Count("SELECT count(*) FROM tenant_" + t + ".onboarding_log"), 0);
}

TEST(Batch, OnePoisonEventAmongNineHundredNinetyNineValidOnesIsIsolated) {
  // The processor starts after the events are queued, so they arrive in one batch.
  const std::string t = UniqueName("poison");
  const std::string s = "tenant_" + t;
  {
    Stack seed;
    ASSERT_TRUE(seed.Publish("v1.messages.upsert." + t, Message("seed").dump()).ok);
    ASSERT_TRUE(seed.WaitCount("SELECT count(*) FROM " + s + ".messages", 1));
    Exec(seed.Dsn(), "ALTER TABLE " + s +
                         ".messages ADD CONSTRAINT no_poison CHECK (message_text <> 'poison')");
    // Stop consuming: publish the batch while no processor runs.
    seed.Processor().Signal(SIGTERM);
    ASSERT_TRUE(seed.Processor().Wait(std::chrono::seconds(30)).has_value());
    for (int i = 0; i < 1000; ++i) {
      const std::string text = i == 500 ? "poison" : "fine";
      ASSERT_TRUE(
          seed.Publish("v1.messages.upsert." + t, Message("p" + std::to_string(i), text).dump())
              .ok);
    }
    // A fresh processor on the same servers drains them.
    ChildProcess processor =
        StartProcessor(seed, {{"BATCH_SIZE", "1000"}, {"BATCH_MAX_WAIT", "1s"}});
    EXPECT_TRUE(
        seed.WaitCount("SELECT count(*) FROM " + s + ".messages", 1000, std::chrono::seconds(60)))
        << processor.Log();
    EXPECT_TRUE(
        seed.WaitCount("SELECT count(*) FROM events_ops.exhausted_events WHERE reason LIKE "
                       "'constraint_violation: %'",
                       1));
    EXPECT_EQ(seed.Count("SELECT count(*) FROM " + s + ".messages WHERE message_id = 'p500'"), 0);
  }
}

TEST(Batch, SeveralUpdatesToOneKeyInOneBatchEndInTheNewestState) {
  const std::string t = UniqueName("multi");
  const std::string s = "tenant_" + t;
  Stack stack;
  const int64_t now = Now();
  ASSERT_TRUE(stack
                  .Publish("v1.chats.upsert." + t, json{{"chat_id", "c1"},
                                                        {"jid", "j"},
                                                        {"phone_number", "+1"},
                                                        {"conversation_timestamp", now - 100}}
                                                       .dump())
                  .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".chats", 1));
  stack.Processor().Signal(SIGTERM);
  ASSERT_TRUE(stack.Processor().Wait(std::chrono::seconds(30)).has_value());
  // Out of order inside one batch: the newest by conversation_timestamp must win; partial
  // fields of newer updates accumulate; an older one changes nothing.
  auto update = [&](int64_t ts, json fields) {
    fields["chat_id"] = "c1";
    fields["conversation_timestamp"] = ts;
    ASSERT_TRUE(stack.Publish("v1.chats.update." + t, fields.dump()).ok);
  };
  update(now - 50, {{"unread_count", 1}});
  update(now - 10, {{"unread_count", 3}, {"last_message", {{"text", "newest"}}}});
  update(now - 30, {{"unread_count", 2}, {"last_message", {{"text", "older"}}}});
  ASSERT_TRUE(stack
                  .Publish("v1.chats.upsert." + t, json{{"chat_id", "c1"},
                                                        {"jid", "j"},
                                                        {"phone_number", "+1"},
                                                        {"push_name", "stale"},
                                                        {"conversation_timestamp", now - 60}}
                                                       .dump())
                  .ok);
  ChildProcess processor(BinaryPath("events-processor"), {}, [&] {
    auto env = stack.Env();
    env["HTTP_PORT"] = std::to_string(FreeTcpPort());
    env["BATCH_MAX_WAIT"] = "1s";
    return env;
  }());
  ASSERT_TRUE(
      stack.WaitCount("SELECT count(*) FROM " + s +
                          ".chats WHERE conversation_timestamp = " + std::to_string(now - 10),
                      1))
      << processor.Log();
  EXPECT_EQ(QueryInt(stack.Dsn(), "SELECT unread_count FROM " + s + ".chats"), 3);
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT last_message->>'text' FROM " + s + ".chats"),
            "newest");
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT coalesce(push_name, 'none') FROM " + s + ".chats"),
            "none");
}

TEST(Batch, ResendingTheSameBatchChangesNothing) {
  Stack stack;
  const std::string t = UniqueName("again");
  const std::string s = "tenant_" + t;
  std::vector<std::string> bodies;
  bodies.reserve(200);
  for (int i = 0; i < 200; ++i)
    bodies.push_back(Message("r" + std::to_string(i), "v" + std::to_string(i)).dump());
  for (const auto& b : bodies) ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, b).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 200));
  const std::string snapshot =
      "SELECT md5(string_agg(message_id || message_text || coalesce(status, ''), ',' ORDER BY "
      "message_id)) FROM " +
      s + ".messages";
  const auto before = QueryString(stack.Dsn(), snapshot);
  // The same events again under new ids, as a retrying publisher would send them.
  for (const auto& b : bodies) ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, b).ok);
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, Message("marker").dump()).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 201));
  EXPECT_EQ(stack.Count("SELECT count(*) FROM " + s + ".messages WHERE message_id <> 'marker'"),
            200);
  const std::string snapshot_without_marker =
      "SELECT md5(string_agg(message_id || message_text || coalesce(status, ''), ',' ORDER BY "
      "message_id)) FROM " +
      s + ".messages WHERE message_id <> 'marker'";
  EXPECT_EQ(QueryString(stack.Dsn(), snapshot_without_marker), before);
}

TEST(Batch, OnboardingFollowsStreamOrderInsideOneBatch) {
  // Queued before the processor starts, so that all four events share one batch.
  Stack stack;
  const std::string t = UniqueName("obord");
  const std::string s = "tenant_" + t;
  stack.Processor().Signal(SIGTERM);
  ASSERT_TRUE(stack.Processor().Wait(std::chrono::seconds(30)).has_value());
  auto inbound = [](const std::string& id, const std::string& phone) {
    return json{{"message_id", id}, {"chat_id", "c"},   {"jid", "j"},
                {"flow", "IN"},     {"agent_id", "a1"}, {"from_phone", phone}}
        .dump();
  };
  auto contact = [](const std::string& phone) {
    return json{{"agent_id", "a1"}, {"phone_number", phone}, {"origin", "CRM"}}.dump();
  };
  // +1: the message comes first, so it meets an unknown phone; the contact event follows.
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, inbound("m1", "+1")).ok);
  ASSERT_TRUE(stack.Publish("v1.contacts.upsert." + t, contact("+1")).ok);
  // +2: the contact exists before the message.
  ASSERT_TRUE(stack.Publish("v1.contacts.upsert." + t, contact("+2")).ok);
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, inbound("m2", "+2")).ok);
  ChildProcess processor =
      StartProcessor(stack, {{"BATCH_SIZE", "1000"}, {"BATCH_MAX_WAIT", "1s"}});
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 2)) << processor.Log();
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".contacts WHERE origin = 'CRM'", 2))
      << processor.Log();
  EXPECT_EQ(QueryString(stack.Dsn(),
                        "SELECT string_agg(phone_number || ':' || message_id, ',') "
                        "FROM " +
                            s + ".onboarding_log"),
            "+1:m1");
}

TEST(Batch, ManyFirstSeenTenantsInOneBatchEachGetTheirSchema) {
  // The schemas of a batch's new tenants are created over several connections at once; ids
  // differing only by case still never share a schema, whichever is created first.
  Stack stack;
  const std::string prefix = UniqueName("fan");
  std::vector<std::string> tenants;
  tenants.reserve(40);
  for (int i = 0; i < 40; ++i) tenants.push_back(prefix + "_" + std::to_string(i));
  std::string upper = tenants[7];
  upper[0] = static_cast<char>(std::toupper(upper[0]));
  stack.Processor().Signal(SIGTERM);
  ASSERT_TRUE(stack.Processor().Wait(std::chrono::seconds(30)).has_value());
  const json chat{{"chat_id", "c"}, {"jid", "j"}, {"phone_number", "+1"}};
  for (const auto& t : tenants) ASSERT_TRUE(stack.Publish("v1.chats.upsert." + t, chat.dump()).ok);
  ASSERT_TRUE(stack.Publish("v1.chats.upsert." + upper, chat.dump()).ok);
  ChildProcess processor = StartProcessor(stack, {{"BATCH_SIZE", "1000"}, {"DB_POOL_SIZE", "4"}});
  EXPECT_TRUE(stack.WaitCount(
      "SELECT count(*) FROM events_ops.exhausted_events WHERE reason LIKE 'invalid_tenant: %'", 1,
      std::chrono::seconds(60)))
      << processor.Log();
  const std::string registered =
      "SELECT count(*) FROM events_ops.tenants WHERE lower(company_id) LIKE '" + prefix + "\\_%'";
  EXPECT_TRUE(stack.WaitCount(registered, 40)) << processor.Log();
  // Schemas are registered before the batch's rows commit: wait for the rows themselves.
  std::string rows = "SELECT 0";
  for (const auto& t : tenants) rows += " + (SELECT count(*) FROM tenant_" + t + ".chats)";
  // Tenant 7's row went to whichever of its two spellings won.
  EXPECT_TRUE(stack.WaitCount(rows, 40)) << processor.Log();
  const auto exhausted = QueryString(
      stack.Dsn(), "SELECT reason FROM events_ops.exhausted_events WHERE company_id IN ('" +
                       tenants[7] + "', '" + upper + "')");
  ASSERT_TRUE(exhausted.has_value());
  EXPECT_NE(exhausted->find("collides"), std::string::npos) << *exhausted;
}

TEST(Batch, AwkwardTextAndJsonValuesArriveUnchanged) {
  // Values that need quoting or escaping on the way to PostgreSQL, written in one batch.
  Stack stack;
  const std::string t = UniqueName("awkward");
  const std::string s = "tenant_" + t;
  const std::vector<std::string> texts = {"say \"hi\"",
                                          "back\\slash\\",
                                          "{braces},[brackets]",
                                          "NULL",
                                          "null",
                                          "",
                                          "comma, separated",
                                          "tab\tnew\nline",
                                          "caf\u00e9 \U0001F600",
                                          "'; DROP TABLE x; --",
                                          "\\\"",
                                          " padded  ",
                                          "$1::text[]",
                                          "E'\\x00'",
                                          "(a,b)"};
  for (size_t i = 0; i < texts.size(); ++i) {
    json m = Message("w" + std::to_string(i), texts[i]);
    m["message_obj"] = json{{"quote", texts[i]}, {"nested", {{"list", {texts[i], nullptr}}}}};
    ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, m.dump()).ok);
  }
  json contact{{"agent_id", "a\"1"},
               {"phone_number", "+55 {1}"},
               {"push_name", R"(O'Brien \ "Bob")"},
               {"tags", {"vip, gold", "a\"b", "{x}", "NULL", ""}}};
  ASSERT_TRUE(stack.Publish("v1.contacts.upsert." + t, contact.dump()).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 15));
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".contacts", 1));
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string id = "'w" + std::to_string(i) + "'";
    EXPECT_EQ(QueryString(stack.Dsn(),
                          "SELECT message_text FROM " + s + ".messages WHERE message_id = " + id),
              texts[i])
        << "message " << i;
    const auto obj = QueryString(
        stack.Dsn(), "SELECT message_obj::text FROM " + s + ".messages WHERE message_id = " + id);
    ASSERT_TRUE(obj.has_value());
    EXPECT_EQ(json::parse(*obj),
              (json{{"quote", texts[i]}, {"nested", {{"list", {texts[i], nullptr}}}}}))
        << "message " << i;
  }
  EXPECT_EQ(QueryString(stack.Dsn(),
                        "SELECT agent_id || '|' || phone_number || '|' || push_name "
                        "FROM " +
                            s + ".contacts"),
            "a\"1|+55 {1}|O'Brien \\ \"Bob\"");
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT array_to_json(tags)::text FROM " + s + ".contacts"),
            json({"vip, gold", "a\"b", "{x}", "NULL", ""}).dump());
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events"), 0);
  // Written by the set-based path, not rescued by the row-at-a-time isolation.
  EXPECT_EQ(stack.Processor().Log().find("batch write failed"), std::string::npos)
      << stack.Processor().Log();
}

TEST(Batch, AFreeFormObjectNestedUpToTheLimitIsStoredAndOneLevelDeeperIsExhausted) {
  // The SPEC bounds free-form objects only by size; the decoder bounds nesting at
  // kMaxJsonDepth levels (the event itself is level 1), far beyond real message objects.
  Stack stack;
  const std::string t = UniqueName("deep");
  const std::string s = "tenant_" + t;
  json deepest = json{{"leaf", "bottom"}};
  for (size_t level = 3; level < validation::kMaxJsonDepth; ++level) {
    deepest = json{{"n", deepest}};
  }
  json fits = Message("fits", "deep");
  fits["message_obj"] = json{{"n", deepest}};  // kMaxJsonDepth levels with the event
  json beyond = Message("beyond", "deeper");
  beyond["message_obj"] = json{{"n", json{{"n", deepest}}}};
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, fits.dump()).ok);
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, beyond.dump()).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 1));
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events", 1));
  const auto stored = QueryString(stack.Dsn(), "SELECT message_obj::text FROM " + s + ".messages");
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(json::parse(*stored), fits["message_obj"]);
  EXPECT_EQ(QueryString(stack.Dsn(),
                        "SELECT split_part(reason, ':', 1) || '|' || "
                        "convert_from(original_payload, 'UTF8') FROM "
                        "events_ops.exhausted_events"),
            "malformed_json|" + beyond.dump());
}

}  // namespace
}  // namespace evp::testing
