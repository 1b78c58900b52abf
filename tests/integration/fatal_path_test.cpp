// Every fatal reason ends in events_ops.exhausted_events with the exact original bytes,
// through the DLQ stream and the dlq-worker, and nothing is written to any tenant.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "integration/stack.hpp"

namespace evp::testing {
namespace {

using nlohmann::json;

struct Row {
  std::string company_id;
  std::string subject;
  std::string error_class;
  std::string reason;
  std::string payload;
  int64_t attempts = 0;
};

// Waits for the single exhausted row of `subject` and returns it.
Row ExhaustedRow(Stack& stack, const std::string& subject) {
  const std::string where =
      " FROM events_ops.exhausted_events WHERE source_subject = '" + subject + "'";
  EXPECT_TRUE(stack.WaitCount("SELECT count(*)" + where, 1)) << subject;
  Row r;
  r.company_id = QueryString(stack.Dsn(), "SELECT company_id" + where).value_or("?");
  r.subject = subject;
  r.error_class = QueryString(stack.Dsn(), "SELECT error_class" + where).value_or("?");
  r.reason = QueryString(stack.Dsn(), "SELECT reason" + where).value_or("?");
  r.payload = QueryBytes(stack.Dsn(), "SELECT original_payload" + where).value_or("?");
  r.attempts = TryQueryInt(stack.Dsn(), "SELECT attempts" + where).value_or(-1);
  return r;
}

TEST(FatalPath, EachFatalReasonEndsInExhaustedEventsWithTheOriginalBytes) {
  Stack stack(std::map<std::string, std::string>{{"MAX_EVENT_BYTES", "4096"}});
  const std::string t = UniqueName("fatal");
  struct Case {
    std::string subject;
    std::string body;
    std::string code;
    std::string company;
  };
  const std::string other = UniqueName("other");
  std::vector<Case> cases = {
      {"v1.chats.upsert." + t, "{\"chat_id\": ", "malformed_json", t},
      {"v1.chats.update." + t, "   \n ", "malformed_json", t},
      {"v1.messages.update." + t, std::string("{\"message_id\":\"\xff\xfe\"}"), "malformed_json",
       t},
      {"v1.contacts.upsert." + t, json{{"phone_number", "+1"}}.dump(), "schema_violation", t},
      {"v1.contacts.update." + t, "[]", "schema_violation", t},
      {"v1.chats.upsert." + t,
       json{{"chat_id", "c"}, {"jid", "j"}, {"phone_number", "+1"}, {"surprise", 1}}.dump(),
       "schema_violation", t},
      {"v1.connection.update." + t, json{{"agent_id", "a"}, {"company_id", other}}.dump(),
       "tenant_mismatch", t},
      {"v1.chats.delete." + t, json{{"chat_id", "c"}}.dump(), "unknown_type", t},
      {"v1.chats.upsert.x." + t, json{{"chat_id", "c"}}.dump(), "unknown_type", t},
      {"v1.messages.upsert.9starts_with_digit", json{{"message_id", "m"}}.dump(), "invalid_tenant",
       "9starts_with_digit"},
      {"v1.messages.upsert." + t,
       json{{"message_id", "m"},
            {"chat_id", "c"},
            {"jid", "j"},
            {"flow", "IN"},
            {"message_text", std::string(5000, 'a')}}
           .dump(),
       "too_large", t},
  };
  // Subjects repeat across cases; give each a distinct subject where possible by checking
  // rows by (subject, reason) below.
  for (const Case& c : cases) ASSERT_TRUE(stack.Publish(c.subject, c.body).ok) << c.subject;
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events",
                              static_cast<int64_t>(cases.size())))
      << "exhausted rows: " << stack.Count("SELECT count(*) FROM events_ops.exhausted_events");
  for (const Case& c : cases) {
    const std::string where = " FROM events_ops.exhausted_events WHERE source_subject = '" +
                              c.subject + "' AND reason LIKE '" + c.code +
                              ": %' AND original_payload = decode('" +
                              [&] {
                                std::string hex;
                                static const char* k = "0123456789abcdef";
                                for (unsigned char ch : c.body) {
                                  hex += k[ch >> 4];
                                  hex += k[ch & 15];
                                }
                                return hex;
                              }() +
                              "', 'hex')";
    EXPECT_EQ(stack.Count("SELECT count(*)" + where), 1) << c.subject << " " << c.code;
    EXPECT_EQ(QueryString(stack.Dsn(), "SELECT company_id" + where), c.company) << c.code;
    EXPECT_EQ(QueryString(stack.Dsn(), "SELECT error_class" + where), "fatal") << c.code;
    EXPECT_EQ(TryQueryInt(stack.Dsn(), "SELECT attempts" + where), 1) << c.code;
  }
  // Nothing was written for any of them.
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.tenants"), 0);
}

TEST(FatalPath, TenantMismatchWritesNothingToEitherTenant) {
  Stack stack;
  const std::string a = UniqueName("ta");
  const std::string b = UniqueName("tb");
  // Both tenants exist.
  for (const auto& t : {a, b}) {
    ASSERT_TRUE(stack
                    .Publish("v1.chats.upsert." + t,
                             json{{"chat_id", "seed"}, {"jid", "j"}, {"phone_number", "+1"}}.dump())
                    .ok);
    ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + t + ".chats", 1));
  }
  const std::string body =
      json{{"chat_id", "stolen"}, {"jid", "j"}, {"phone_number", "+1"}, {"company_id", b}}.dump();
  ASSERT_TRUE(stack.Publish("v1.chats.upsert." + a, body).ok);
  Row r = ExhaustedRow(stack, "v1.chats.upsert." + a);
  EXPECT_EQ(r.company_id, a);
  EXPECT_EQ(r.reason.rfind("tenant_mismatch: ", 0), 0u) << r.reason;
  EXPECT_EQ(r.payload, body);
  EXPECT_EQ(stack.Count("SELECT count(*) FROM tenant_" + a + ".chats WHERE chat_id = 'stolen'"), 0);
  EXPECT_EQ(stack.Count("SELECT count(*) FROM tenant_" + b + ".chats WHERE chat_id = 'stolen'"), 0);
}

TEST(FatalPath, IdsDifferingOnlyByCaseNeverShareASchema) {
  Stack stack;
  const std::string lower = UniqueName("case");
  std::string upper = lower;
  upper[0] = static_cast<char>(std::toupper(upper[0]));
  ASSERT_TRUE(stack
                  .Publish("v1.chats.upsert." + lower,
                           json{{"chat_id", "c"}, {"jid", "j"}, {"phone_number", "+1"}}.dump())
                  .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + lower + ".chats", 1));
  ASSERT_TRUE(stack
                  .Publish("v1.chats.upsert." + upper,
                           json{{"chat_id", "x"}, {"jid", "j"}, {"phone_number", "+1"}}.dump())
                  .ok);
  Row r = ExhaustedRow(stack, "v1.chats.upsert." + upper);
  EXPECT_EQ(r.reason.rfind("invalid_tenant: ", 0), 0u) << r.reason;
  EXPECT_NE(r.reason.find("collides"), std::string::npos) << r.reason;
  EXPECT_EQ(r.company_id, upper);
  EXPECT_EQ(stack.Count("SELECT count(*) FROM tenant_" + lower + ".chats"), 1);
}

TEST(FatalPath, InvalidTenantGoesToTheInvalidDlqSubjectAndKeepsTheRawToken) {
  Stack stack;
  ASSERT_TRUE(stack.Publish("v1.chats.upsert.has-dash", json{{"chat_id", "c"}}.dump()).ok);
  Row r = ExhaustedRow(stack, "v1.chats.upsert.has-dash");
  EXPECT_EQ(r.company_id, "has-dash");
  EXPECT_EQ(r.reason.rfind("invalid_tenant: ", 0), 0u) << r.reason;
  EXPECT_NE(QueryString(stack.Dsn(), "SELECT dlq_metadata::text FROM events_ops.exhausted_events"),
            std::nullopt);
}

TEST(FatalPath, AnInvalidTenantTokenTooLongToIndexIsRecordedCut) {
  // 3,000 characters that do not compress: exhausted_events indexes company_id and
  // source_subject, and a btree entry holds at most about 2.7 KB.
  std::string token;
  uint32_t x = 12345;
  for (int i = 0; i < 3000; ++i) {
    x = x * 1103515245u + 12345u;
    token += "abcdefghijklmnopqrstuvwxyz0123456789"[(x >> 16) % 36];
  }
  Stack stack;
  ASSERT_TRUE(stack.Publish("v1.chats.upsert." + token, json{{"chat_id", "c"}}.dump()).ok);
  EXPECT_TRUE(stack.WaitCount(
      "SELECT count(*) FROM events_ops.exhausted_events WHERE reason LIKE 'invalid_tenant:%' AND "
      "company_id = '" +
          token.substr(0, 2048) + "' AND length(source_subject) = 2048",
      1))
      << stack.WorkerLogs();
}

TEST(FatalPath, ASubjectWithoutTenantIsFiledWithAnEmptyTenantAndKeepsItsMessageId) {
  Stack stack;
  const std::string id = UniqueName("pub");
  ASSERT_TRUE(stack.Publish("v1.chats.upsert", json{{"chat_id", "c"}}.dump(), id).ok);
  Row r = ExhaustedRow(stack, "v1.chats.upsert");
  EXPECT_EQ(r.reason.rfind("unknown_type: ", 0), 0u) << r.reason;
  EXPECT_EQ(r.company_id, "");
  EXPECT_EQ(QueryString(stack.Dsn(),
                        "SELECT dlq_metadata->>'orig_msg_id' FROM events_ops.exhausted_events"),
            id);
}

TEST(FatalPath, EventctlPublishSendsAFilesExactBytesEvenAnEmptyFile) {
  Stack stack;
  const std::string t = UniqueName("file");
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / UniqueName("evp");
  std::filesystem::create_directories(dir);
  const std::string empty = (dir / "empty.json").string();
  std::ofstream(empty, std::ios::binary).close();
  ChildProcess cli(BinaryPath("eventctl"),
                   {"publish", "--subject", "v1.chats.upsert." + t, "--file", empty}, stack.Env());
  EXPECT_EQ(cli.Wait(std::chrono::seconds(20)), 0) << cli.Log();
  std::filesystem::remove_all(dir);
  Row r = ExhaustedRow(stack, "v1.chats.upsert." + t);
  EXPECT_EQ(r.reason.rfind("malformed_json: ", 0), 0u) << r.reason;
  EXPECT_EQ(r.payload, "");
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.tenants"), 0);
}

TEST(FatalPath, DataTheDatabaseRefusesIsIsolatedAsConstraintViolation) {
  Stack stack;
  const std::string t = UniqueName("cons");
  const std::string s = "tenant_" + t;
  auto msg = [](const std::string& id, const std::string& text) {
    return json{
        {"message_id", id}, {"chat_id", "c"}, {"jid", "j"}, {"flow", "OUT"}, {"message_text", text}}
        .dump();
  };
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, msg("seed", "hi")).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 1));
  // A rule of the database that the schema does not know: only the event breaking it fails.
  Exec(stack.Dsn(),
       "ALTER TABLE " + s + ".messages ADD CONSTRAINT no_poison CHECK (message_text <> 'poison')");
  const std::string poison = msg("p", "poison");
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, msg("before", "ok")).ok);
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, poison).ok);
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, msg("after", "ok")).ok);
  Row r = ExhaustedRow(stack, "v1.messages.upsert." + t);
  EXPECT_EQ(r.reason.rfind("constraint_violation: ", 0), 0u) << r.reason;
  EXPECT_NE(r.reason.find("no_poison"), std::string::npos) << r.reason;
  // PostgreSQL's DETAIL line quotes the row: payload data stays out of reasons and logs.
  EXPECT_EQ(r.reason.find("DETAIL"), std::string::npos) << r.reason;
  EXPECT_EQ(r.reason.find("Failing row"), std::string::npos) << r.reason;
  EXPECT_EQ(stack.Processor().Log().find("Failing row"), std::string::npos);
  EXPECT_EQ(r.payload, poison);
  EXPECT_EQ(r.error_class, "fatal");
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 3));
}

TEST(FatalPath, ThePublishersTraceIdIsLoggedAndKeptWithTheExhaustedRow) {
  Stack stack;
  const std::string t = UniqueName("trace");
  const std::string trace = "4bf92f3577b34da6a3ce929d0e0e4736";
  ASSERT_TRUE(stack
                  .Publish("v1.chats.upsert." + t, "{oops", "",
                           {{"traceparent", "00-" + trace + "-00f067aa0ba902b7-01"}})
                  .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events", 1));
  EXPECT_EQ(
      QueryString(stack.Dsn(), "SELECT dlq_metadata->>'trace_id' FROM events_ops.exhausted_events"),
      trace);
  EXPECT_NE(stack.Processor().Log().find("trace_id=" + trace), std::string::npos)
      << stack.Processor().Log();
}

TEST(FatalPath, HistoryBatchStoresValidItemsAndExhaustsEachInvalidItemAlone) {
  Stack stack;
  const std::string t = UniqueName("hist");
  // Written by hand (keys unsorted, spaces, an escape): the invalid item is stored with its
  // exact bytes, not a re-serialisation.
  const std::string bad = R"({ "jid" : "j\u00e9",  "chat_id": "h2" })";  // phone_number missing
  const std::string body = R"({"chats": [ {"chat_id": "h1", "jid": "j", "phone_number": "+1"}, )" +
                           bad + R"(, {"phone_number": "+3", "jid": "j", "chat_id": "h3"} ]})";
  ASSERT_TRUE(stack.Publish("v1.history.chats." + t, body).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + t + ".chats", 2));
  Row r = ExhaustedRow(stack, "v1.history.chats." + t);
  EXPECT_EQ(r.payload, bad);
  EXPECT_EQ(r.reason.rfind("schema_violation: ", 0), 0u) << r.reason;
  EXPECT_NE(r.reason.find("phone_number"), std::string::npos) << r.reason;
  EXPECT_EQ(QueryString(stack.Dsn(),
                        "SELECT dlq_metadata->>'item_index' FROM events_ops.exhausted_events WHERE "
                        "company_id = '" +
                            t + "'"),
            "1");
  // The metadata names the batch's subject and stream sequence too (SPEC §11).
  EXPECT_EQ(QueryString(stack.Dsn(),
                        "SELECT dlq_metadata->>'subject' FROM events_ops.exhausted_events WHERE "
                        "company_id = '" +
                            t + "'"),
            "v1.history.chats." + t);
  EXPECT_NE(QueryString(stack.Dsn(),
                        "SELECT dlq_metadata->>'stream_seq' FROM events_ops.exhausted_events "
                        "WHERE company_id = '" +
                            t + "'"),
            "0");
}

TEST(FatalPath, AHistoryItemWithInvalidUtf8IsExhaustedAloneWithItsExactBytes) {
  // The envelope is not valid JSON as a whole, yet each item is judged alone (SPEC §5/§6).
  Stack stack;
  const std::string t = UniqueName("histutf");
  const std::string bad = "{\"chat_id\": \"h2\", \"jid\": \"j\xff\", \"phone_number\": \"+2\"}";
  const std::string body = R"({"chats": [ {"chat_id": "h1", "jid": "j", "phone_number": "+1"}, )" +
                           bad + R"(, {"phone_number": "+3", "jid": "j", "chat_id": "h3"} ]})";
  ASSERT_TRUE(stack.Publish("v1.history.chats." + t, body).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + t + ".chats", 2));
  Row r = ExhaustedRow(stack, "v1.history.chats." + t);
  EXPECT_TRUE(r.payload == bad) << "the item's exact bytes, invalid UTF-8 included";
  EXPECT_EQ(r.reason.rfind("malformed_json: ", 0), 0u) << r.reason;
  EXPECT_EQ(QueryString(stack.Dsn(),
                        "SELECT dlq_metadata->>'item_index' FROM events_ops.exhausted_events WHERE "
                        "company_id = '" +
                            t + "'"),
            "1");
  EXPECT_EQ(stack.Count("SELECT count(*) FROM tenant_" + t + ".chats WHERE chat_id = 'h2'"), 0);
}

}  // namespace
}  // namespace evp::testing
