// The DLQ worker pool on real servers: honest attempt counts, retries with backoff, crash and
// outage safety, and redrive.
#include <gtest/gtest.h>

#include <csignal>
#include <nlohmann/json.hpp>
#include <sstream>

#include "integration/stack.hpp"

namespace evp::testing {
namespace {

using nlohmann::json;
using Env = std::map<std::string, std::string>;

std::string Message(const std::string& id) {
  return json{{"message_id", id}, {"chat_id", "c"}, {"jid", "j"}, {"flow", "OUT"}}.dump();
}

// Creates the tenant, then hides its messages table: every messages.upsert for it fails
// transiently (undefined table) while the database stays up.
void BreakMessagesTable(Stack& stack, const std::string& tenant) {
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + tenant, Message("seed")).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + tenant + ".messages", 1));
  Exec(stack.Dsn(), "ALTER TABLE tenant_" + tenant + ".messages RENAME TO messages_hidden");
}

// Creates the tenant, then adds a CHECK constraint to its messages table: the events it
// refuses become constraint_violation rows.
void AddMessagesCheck(Stack& stack, const std::string& tenant, const std::string& check) {
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + tenant, Message("seed")).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + tenant + ".messages", 1));
  Exec(stack.Dsn(), "ALTER TABLE tenant_" + tenant + ".messages ADD CONSTRAINT " + check);
}

void RepairMessagesTable(Stack& stack, const std::string& tenant) {
  Exec(stack.Dsn(), "ALTER TABLE tenant_" + tenant + ".messages_hidden RENAME TO messages");
}

double Metric(int port, const std::string& series) {
  const std::string text = Stack::HttpGet(port, "/metrics");
  // A sample line starts with the series (the HELP and TYPE lines start with '#').
  auto pos = text.find("\n" + series + " ");
  if (pos == std::string::npos) return 0;
  return std::stod(text.substr(pos + series.size() + 2));
}

const char* kRetryScheduled = R"(evp_dlq_messages_total{outcome="retry_scheduled"})";
const char* kAppliedOnRetry = R"(evp_dlq_messages_total{outcome="applied_on_retry"})";

TEST(DlqWorker, FatalEventIsExhaustedAfterExactlyOneAttempt) {
  Stack stack;
  const std::string t = UniqueName("once");
  ASSERT_TRUE(stack.Publish("v1.chats.upsert." + t, "not json").ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events", 1));
  EXPECT_EQ(QueryInt(stack.Dsn(), "SELECT attempts FROM events_ops.exhausted_events"), 1);
  EXPECT_EQ(Metric(stack.WorkerPort(), kRetryScheduled), 0);
}

TEST(DlqWorker, EventFailingEveryTimeIsExhaustedWithMaxAttemptsAsRetryable) {
  Stack stack(Env{{"MAX_DELIVER", "2"}, {"DLQ_MAX_ATTEMPTS", "3"}, {"DLQ_BASE_DELAY", "50ms"}});
  const std::string t = UniqueName("always");
  BreakMessagesTable(stack, t);
  const std::string body = Message("doomed");
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, body).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events", 1));
  EXPECT_EQ(QueryInt(stack.Dsn(), "SELECT attempts FROM events_ops.exhausted_events"), 3);
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT error_class FROM events_ops.exhausted_events"),
            "retryable");
  const auto reason =
      QueryString(stack.Dsn(), "SELECT reason FROM events_ops.exhausted_events").value_or("");
  EXPECT_EQ(reason.rfind("retries_exhausted: ", 0), 0u) << reason;
  EXPECT_NE(reason.find("messages"), std::string::npos) << "names the last error: " << reason;
  EXPECT_EQ(QueryBytes(stack.Dsn(), "SELECT original_payload FROM events_ops.exhausted_events"),
            body);
  EXPECT_EQ(Metric(stack.WorkerPort(), kRetryScheduled), 1);
}

TEST(DlqWorker, EventFailingTwiceThenSucceedingIsAppliedOnTheThirdAttempt) {
  // Attempt 1 is the processor's; attempt 2 the worker's first retry (1-2 s later); attempt 3
  // comes at least DLQ_BASE_DELAY * 2 / 2 = 2 s after that, which leaves time to repair the
  // table.
  Stack stack(Env{{"MAX_DELIVER", "2"}, {"DLQ_MAX_ATTEMPTS", "5"}, {"DLQ_BASE_DELAY", "2s"}});
  const std::string t = UniqueName("third");
  BreakMessagesTable(stack, t);
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, Message("phoenix")).ok);
  ASSERT_TRUE(WaitFor([&] { return Metric(stack.WorkerPort(), kRetryScheduled) == 1; }))
      << stack.WorkerLogs();
  RepairMessagesTable(stack, t);
  ASSERT_TRUE(stack.WaitCount(
      "SELECT count(*) FROM tenant_" + t + ".messages WHERE message_id = 'phoenix'", 1));
  ASSERT_TRUE(WaitFor([&] { return Metric(stack.WorkerPort(), kAppliedOnRetry) == 1; }));
  EXPECT_NE(stack.WorkerLogs().find("event applied on retry"), std::string::npos);
  EXPECT_NE(stack.WorkerLogs().find("attempts=3"), std::string::npos) << stack.WorkerLogs();
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events"), 0);
}

TEST(DlqWorker, KillingTheWorkerMidRetryKeepsTheAttemptCount) {
  Stack stack(Env{{"MAX_DELIVER", "2"},
                  {"DLQ_MAX_ATTEMPTS", "4"},
                  {"DLQ_BASE_DELAY", "1s"},
                  {"DLQ_ACK_WAIT", "2s"}});
  const std::string t = UniqueName("kill");
  BreakMessagesTable(stack, t);
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, Message("survivor")).ok);
  ASSERT_TRUE(WaitFor([&] { return Metric(stack.WorkerPort(), kRetryScheduled) >= 1; }));
  stack.Worker().Signal(SIGKILL);
  ASSERT_TRUE(stack.Worker().Wait(std::chrono::seconds(5)).has_value());
  stack.StartWorker();
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events", 1,
                              std::chrono::seconds(40)))
      << stack.WorkerLogs();
  // Attempts continued from where the killed worker left them, and the event is recorded once.
  EXPECT_EQ(QueryInt(stack.Dsn(), "SELECT attempts FROM events_ops.exhausted_events"), 4);
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events"), 1);
}

// Lines of the worker's log about the outcome of one retry attempt of `event_id`.
int RetryOutcomeLines(const std::string& log, const std::string& event_id, int attempt) {
  int lines = 0;
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    const bool outcome = line.find("retry failed; rescheduled") != std::string::npos ||
                         line.find("event applied on retry") != std::string::npos;
    if (outcome && line.find("event_id=" + event_id + " ") != std::string::npos &&
        line.find(" attempts=" + std::to_string(attempt)) != std::string::npos) {
      ++lines;
    }
  }
  return lines;
}

TEST(DlqWorker, ARetryWaitingForALockKeepsItsLetterFromTheOtherWorkers) {
  // Each write gives up on the lock after 3 s; the worker's hold on a letter lapses after
  // 1 s unless it says it is still working on it.
  Stack stack(Env{{"MAX_DELIVER", "2"},
                  {"DB_LOCK_TIMEOUT", "3s"},
                  {"DLQ_ACK_WAIT", "1s"},
                  {"DLQ_WORKERS", "4"},
                  {"DLQ_BASE_DELAY", "100ms"},
                  {"DLQ_MAX_ATTEMPTS", "10"}});
  const std::string t = UniqueName("held");
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, Message("seed")).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + t + ".messages", 1));
  HeldLock lock(stack.Dsn(), "tenant_" + t + ".messages", "EXCLUSIVE");
  const std::string event_id = UniqueName("held-evt");
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, Message("waiting"), event_id).ok);
  // The processor's two deliveries time out on the lock; the worker's first retry too.
  ASSERT_TRUE(WaitFor([&] { return RetryOutcomeLines(stack.WorkerLogs(), event_id, 2) >= 1; },
                      std::chrono::seconds(40)))
      << stack.WorkerLogs();
  lock.Release();
  ASSERT_TRUE(stack.WaitCount(
      "SELECT count(*) FROM tenant_" + t + ".messages WHERE message_id = 'waiting'", 1));
  ASSERT_TRUE(WaitFor([&] { return Metric(stack.WorkerPort(), kAppliedOnRetry) == 1; }))
      << stack.WorkerLogs();
  // Each attempt ran once: no other worker took the letter while a retry waited.
  const std::string log = stack.WorkerLogs();
  for (int attempt = 2; attempt <= 10; ++attempt) {
    EXPECT_LE(RetryOutcomeLines(log, event_id, attempt), 1) << "attempt " << attempt << "\n" << log;
  }
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events"), 0);
}

TEST(DlqWorker, PostgresOutageOf20SecondsExhaustsNothingAndRecordsEverythingAfterwards) {
  Stack stack(Env{}, /*private_postgres=*/true);
  ASSERT_NE(stack.PrivatePostgres(), nullptr);
  const std::string t = UniqueName("outage");
  // Make sure the ops schema exists, then take the database away.
  ASSERT_TRUE(Stack::Ready(stack.WorkerPort()));
  stack.PrivatePostgres()->Stop();
  const auto stopped_at = std::chrono::steady_clock::now();
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(stack.Publish("v1.chats.upsert." + t, "broken " + std::to_string(i)).ok);
  }
  // Both binaries notice and report not ready.
  EXPECT_TRUE(WaitFor([&] { return !Stack::Ready(stack.WorkerPort()); }));
  EXPECT_TRUE(WaitFor([&] { return !Stack::Ready(stack.ProcessorPort()); }));
  while (std::chrono::steady_clock::now() - stopped_at < std::chrono::seconds(20)) {
    ASSERT_TRUE(stack.Worker().Running());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the outage itself
  }
  stack.PrivatePostgres()->Start();
  EXPECT_TRUE(WaitFor([&] { return Stack::Ready(stack.WorkerPort()); }, std::chrono::seconds(30)));
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events", 5,
                              std::chrono::seconds(30)));
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events WHERE attempts = 1 AND "
                        "reason LIKE 'malformed_json: %'"),
            5);
}

TEST(DlqWorker, AnUpdateWaitingForItsRowSurvivesAnOutageLongerThanTheGrace) {
  // SPEC §11: an outage of any length exhausts nothing. ORDERING_GRACE is 3 s here.
  Stack stack(Env{}, /*private_postgres=*/true);
  const std::string t = UniqueName("wait");
  const std::string s = "tenant_" + t;
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, Message("seed")).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 1));
  // Explicit event times: the update (read) is newer than the message it changes.
  const int64_t t0 = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count() -
                     100;
  ASSERT_TRUE(
      stack
          .Publish("v1.messages.update." + t,
                   json{{"message_id", "late"}, {"status", "read"}, {"timestamp", t0 + 1}}.dump())
          .ok);
  const std::string not_yet =
      R"(evp_events_total{outcome="not_yet_retried",type="messages.update"})";
  ASSERT_TRUE(WaitFor([&] { return Metric(stack.ProcessorPort(), not_yet) >= 1; }));
  stack.PrivatePostgres()->Stop();
  const auto stopped_at = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - stopped_at < std::chrono::seconds(8)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the outage itself
  }
  stack.PrivatePostgres()->Start();
  // After the outage the update is tried again before its row arrives: still inside the
  // grace, as the outage does not count (else it would be exhausted here).
  ASSERT_TRUE(WaitFor(
      [&] {
        return Metric(stack.ProcessorPort(), not_yet) >= 2 ||
               stack.Count("SELECT count(*) FROM events_ops.exhausted_events") > 0;
      },
      std::chrono::seconds(30)));
  json late = json::parse(Message("late"));
  late["message_timestamp"] = t0;
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, late.dump()).ok);
  EXPECT_TRUE(stack.WaitCount(
      "SELECT count(*) FROM " + s + ".messages WHERE message_id = 'late' AND status = 'read'", 1,
      std::chrono::seconds(30)));
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events"), 0);
}

TEST(DlqWorker, RedriveTwiceOfAThousandExhaustedEventsAppliesEachOnce) {
  Stack stack;
  const std::string t = UniqueName("redrive");
  const std::string s = "tenant_" + t;
  AddMessagesCheck(stack, t, "frozen CHECK (message_id = 'seed')");
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, Message("r" + std::to_string(i))).ok);
  }
  ASSERT_TRUE(
      stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events WHERE reason LIKE "
                      "'constraint_violation: %'",
                      1000, std::chrono::seconds(60)));
  Exec(stack.Dsn(), "ALTER TABLE " + s + ".messages DROP CONSTRAINT frozen");

  auto redrive = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"exhausted", "redrive", "--tenant", t, "--note", "fixed"};
    for (auto& a : extra) args.push_back(a);
    ChildProcess cli(BinaryPath("eventctl"), args, stack.Env());
    auto rc = cli.Wait(std::chrono::seconds(60));
    EXPECT_EQ(rc, 0) << cli.Log();
    return cli.Log();
  };
  const std::string dry = redrive({"--dry-run"});
  EXPECT_NE(dry.find("1000 event(s) would be redriven\nlimit reached (--limit 1000)"),
            std::string::npos)
      << dry;
  const std::string first = redrive({});
  EXPECT_NE(first.find("redriven 1000 event(s)"), std::string::npos) << first;
  // 1,000 is also the default --limit: the operator is told that more may match.
  EXPECT_NE(first.find("limit reached (--limit 1000)"), std::string::npos) << first;
  ASSERT_TRUE(
      stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 1001, std::chrono::seconds(60)));
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events WHERE resolved AND notes "
                        "LIKE '%fixed%'"),
            1000);
  // Again: resolved rows are not selected; forcing them in with --all is deduplicated.
  const std::string second = redrive({});
  EXPECT_NE(second.find("redriven 0 event(s)"), std::string::npos) << second;
  EXPECT_EQ(second.find("limit reached"), std::string::npos) << second;
  const std::string forced = redrive({"--all"});
  EXPECT_NE(forced.find("redriven 0 event(s)"), std::string::npos) << forced;
  EXPECT_NE(forced.find("1000 other event(s) were in the stream already"), std::string::npos)
      << forced;
  // Not a terminal: no progress line running into the summary.
  EXPECT_EQ(first.find("redriving:"), std::string::npos) << first;
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, Message("marker")).ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 1002));
  const std::string applied = R"(evp_events_total{outcome="applied",type="messages.upsert"})";
  EXPECT_EQ(Metric(stack.ProcessorPort(), applied), 1002) << "each redriven event applied once";
  EXPECT_EQ(Metric(stack.ProcessorPort(), "evp_redriven_events_total"), 1000);
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events"), 1000);
}

TEST(DlqWorker, RedrivesOfTwoDatabasesSharingNatsAreNotDeduplicatedAgainstEachOther) {
  // Two deployments with their own databases on one NATS: their exhausted rows have the same
  // ids, yet each redrive must reach the stream.
  Stack stack;
  const std::string t = UniqueName("twodb");
  const std::string db2 = UniqueName("evp_second");
  ExecAutocommit(PostgresServer::Shared().AdminDsn(), "CREATE DATABASE " + db2);
  auto env2 = stack.Env();
  env2["POSTGRES_DSN"] = DsnWithDatabase(PostgresServer::Shared().AdminDsn(), db2);
  ChildProcess migrate(BinaryPath("eventctl"), {"migrate"}, env2);
  ASSERT_EQ(migrate.Wait(std::chrono::seconds(30)), 0) << migrate.Log();
  auto seed = [&](const std::string& dsn, const std::string& chat) {
    const std::string body = json{{"chat_id", chat}, {"jid", "j"}, {"phone_number", "+1"}}.dump();
    Exec(dsn,
         "INSERT INTO events_ops.exhausted_events (id, idempotency_key, company_id, "
         "source_subject, error_class, reason, attempts, original_payload, first_failed_at, "
         "last_failed_at) VALUES (77, 'seed', '" +
             t + "', 'v1.chats.upsert." + t +
             "', 'retryable', 'retries_exhausted: seeded', 3, convert_to('" + body +
             "', 'UTF8'), now(), now())");
  };
  seed(stack.Dsn(), "from-first");
  seed(env2["POSTGRES_DSN"], "from-second");
  ChildProcess first(BinaryPath("eventctl"), {"exhausted", "redrive", "--id", "77"}, stack.Env());
  ASSERT_EQ(first.Wait(std::chrono::seconds(30)), 0) << first.Log();
  ChildProcess second(BinaryPath("eventctl"), {"exhausted", "redrive", "--id", "77"}, env2);
  ASSERT_EQ(second.Wait(std::chrono::seconds(30)), 0) << second.Log();
  EXPECT_EQ(second.Log().find("already in the stream"), std::string::npos) << second.Log();
  // The stack's processor applies both republished events.
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + t + ".chats", 2)) << second.Log();
  ExecAutocommit(PostgresServer::Shared().AdminDsn(), "DROP DATABASE " + db2 + " WITH (FORCE)");
}

TEST(DlqWorker, MigrateOfATenantRecreatesTablesDroppedByHandAndNamesMissingColumns) {
  Stack stack;
  const std::string t = UniqueName("repair");
  const std::string s = "tenant_" + t;
  auto inbound = [&](const std::string& id, const std::string& phone) {
    return stack
        .Publish("v1.messages.upsert." + t, json{{"message_id", id},
                                                 {"chat_id", "c"},
                                                 {"jid", "j"},
                                                 {"flow", "IN"},
                                                 {"agent_id", "a"},
                                                 {"from_phone", phone}}
                                                .dump())
        .ok;
  };
  ASSERT_TRUE(inbound("m1", "+1"));
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".onboarding_log", 1));
  const std::string indexes = "SELECT count(*) FROM pg_indexes WHERE schemaname = '" + s + "'";
  const int64_t index_count = stack.Count(indexes);
  Exec(stack.Dsn(), "DROP TABLE " + s + ".contacts; DROP TABLE " + s + ".onboarding_log");
  auto migrate = [&] {
    ChildProcess cli(BinaryPath("eventctl"), {"migrate", "--tenant", t}, stack.Env());
    const auto rc = cli.Wait(std::chrono::seconds(30));
    return std::make_pair(rc, cli.Log());
  };
  const auto [rc, log] = migrate();
  EXPECT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("schema " + s + ": recreated missing table(s) contacts, onboarding_log"),
            std::string::npos)
      << log;
  EXPECT_EQ(stack.Count(indexes), index_count) << "indexes and keys come back with the tables";
  EXPECT_EQ(stack.Count("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'evp_repair%'"), 0);
  // The processor writes to them again, the serial id of onboarding_log included.
  ASSERT_TRUE(inbound("m2", "+2"));
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".onboarding_log WHERE id > 0", 1));
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".contacts", 1));
  // Again: nothing to do.
  const auto [again_rc, again] = migrate();
  EXPECT_EQ(again_rc, 0) << again;
  EXPECT_EQ(again.find("recreated"), std::string::npos) << again;
  // A column dropped by hand is named, not recreated.
  Exec(stack.Dsn(), "ALTER TABLE " + s + ".chats DROP COLUMN push_name");
  const auto [column_rc, column] = migrate();
  EXPECT_EQ(column_rc, 1) << column;
  EXPECT_NE(column.find("column(s) missing, not recreated: chats.push_name"), std::string::npos)
      << column;
}

TEST(DlqWorker, ExhaustedListShowAndResolveWork) {
  Stack stack;
  const std::string t = UniqueName("cli");
  ASSERT_TRUE(stack.Publish("v1.contacts.upsert." + t, "{\"oops\"").ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events", 1));
  const int64_t id = QueryInt(stack.Dsn(), "SELECT id FROM events_ops.exhausted_events");
  ChildProcess list(BinaryPath("eventctl"),
                    {"exhausted", "list", "--tenant", t, "--reason", "malformed_json", "--json"},
                    stack.Env());
  ASSERT_EQ(list.Wait(std::chrono::seconds(20)), 0) << list.Log();
  EXPECT_NE(list.Log().find("\"source_subject\":\"v1.contacts.upsert." + t + "\""),
            std::string::npos)
      << list.Log();
  ChildProcess show(BinaryPath("eventctl"), {"exhausted", "show", std::to_string(id)}, stack.Env());
  ASSERT_EQ(show.Wait(std::chrono::seconds(20)), 0) << show.Log();
  EXPECT_NE(show.Log().find(R"("payload": "{\"oops\"")"), std::string::npos) << show.Log();
  ChildProcess resolve(BinaryPath("eventctl"),
                       {"exhausted", "resolve", std::to_string(id), "--note", "publisher fixed"},
                       stack.Env());
  ASSERT_EQ(resolve.Wait(std::chrono::seconds(20)), 0) << resolve.Log();
  EXPECT_EQ(
      QueryString(stack.Dsn(), "SELECT notes FROM events_ops.exhausted_events WHERE resolved"),
      "publisher fixed");
  ChildProcess none(BinaryPath("eventctl"), {"exhausted", "list", "--tenant", t}, stack.Env());
  ASSERT_EQ(none.Wait(std::chrono::seconds(20)), 0);
  EXPECT_NE(none.Log().find("0 row(s)"), std::string::npos) << none.Log();
  // A resolved row asked for by id is skipped, and said so: running the same command twice is
  // harmless. An id that does not exist is an error; a misspelt reason code is refused rather
  // than matching nothing.
  ChildProcess again(BinaryPath("eventctl"), {"exhausted", "redrive", "--id", std::to_string(id)},
                     stack.Env());
  EXPECT_EQ(again.Wait(std::chrono::seconds(20)), 0) << again.Log();
  EXPECT_NE(again.Log().find("resolved already (publisher fixed), skipped"), std::string::npos)
      << again.Log();
  EXPECT_NE(again.Log().find("redriven 0 event(s)"), std::string::npos) << again.Log();
  ChildProcess unknown(BinaryPath("eventctl"), {"exhausted", "redrive", "--id", "999999"},
                       stack.Env());
  EXPECT_EQ(unknown.Wait(std::chrono::seconds(20)), 1) << unknown.Log();
  EXPECT_NE(unknown.Log().find("id 999999: not found or outside the filters"), std::string::npos)
      << unknown.Log();
  EXPECT_NE(unknown.Log().find("0 failed, 0 marked resolved, 1 --id not selected"),
            std::string::npos)
      << "the summary does not call it a failed publish: " << unknown.Log();
  ChildProcess unknown_dry(BinaryPath("eventctl"),
                           {"exhausted", "redrive", "--id", "999999", "--dry-run"}, stack.Env());
  EXPECT_EQ(unknown_dry.Wait(std::chrono::seconds(20)), 1) << unknown_dry.Log();
  EXPECT_NE(unknown_dry.Log().find("0 event(s) would be redriven, 1 --id not selected"),
            std::string::npos)
      << "a dry run says what the real run would: " << unknown_dry.Log();
  ChildProcess typo(BinaryPath("eventctl"), {"exhausted", "list", "--reason", "malformed"},
                    stack.Env());
  EXPECT_NE(typo.Wait(std::chrono::seconds(20)), 0) << typo.Log();
  EXPECT_NE(typo.Log().find("malformed_json"), std::string::npos) << typo.Log();
  // A note is optional.
  ASSERT_TRUE(stack.Publish("v1.contacts.upsert." + t, "{\"again\"").ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events", 2));
  const int64_t second =
      QueryInt(stack.Dsn(), "SELECT id FROM events_ops.exhausted_events WHERE NOT resolved");
  ChildProcess bare(BinaryPath("eventctl"), {"exhausted", "resolve", std::to_string(second)},
                    stack.Env());
  ASSERT_EQ(bare.Wait(std::chrono::seconds(20)), 0) << bare.Log();
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events WHERE resolved"), 2);
  // An id that does not exist is an error the operator sees; one resolved already is left as
  // it was, and is not an error.
  ChildProcess missing(BinaryPath("eventctl"), {"exhausted", "resolve", "999999"}, stack.Env());
  EXPECT_EQ(missing.Wait(std::chrono::seconds(20)), 1) << missing.Log();
  EXPECT_NE(missing.Log().find("not found: 999999"), std::string::npos) << missing.Log();
  ChildProcess twice(BinaryPath("eventctl"),
                     {"exhausted", "resolve", std::to_string(second), "--note", "later"},
                     stack.Env());
  EXPECT_EQ(twice.Wait(std::chrono::seconds(20)), 0) << twice.Log();
  EXPECT_NE(twice.Log().find("resolved already, left as they were: " + std::to_string(second)),
            std::string::npos)
      << twice.Log();
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT notes FROM events_ops.exhausted_events WHERE id = " +
                                         std::to_string(second)),
            "resolved by eventctl")
      << "the first note stays";
  // Redriven again with --all: the row says so (the replay fails again, as a new row).
  ChildProcess replay(
      BinaryPath("eventctl"),
      {"exhausted", "redrive", "--id", std::to_string(id), "--all", "--note", "replayed"},
      stack.Env());
  EXPECT_EQ(replay.Wait(std::chrono::seconds(20)), 0) << replay.Log();
  EXPECT_NE(replay.Log().find("redriven 1 event(s)"), std::string::npos) << replay.Log();
  EXPECT_EQ(QueryString(stack.Dsn(), "SELECT notes FROM events_ops.exhausted_events WHERE id = " +
                                         std::to_string(id)),
            "publisher fixed\nredriven by eventctl: replayed");
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events", 3));
  // --tenant '' selects the rows of subjects without a tenant, not every row.
  ASSERT_TRUE(stack.Publish("v1.contacts.upsert", "{}").ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events", 4));
  ChildProcess untenanted(BinaryPath("eventctl"),
                          {"exhausted", "list", "--tenant", "", "--all", "--json"}, stack.Env());
  ASSERT_EQ(untenanted.Wait(std::chrono::seconds(20)), 0) << untenanted.Log();
  EXPECT_NE(untenanted.Log().find(R"("source_subject":"v1.contacts.upsert")"), std::string::npos)
      << untenanted.Log();
  EXPECT_EQ(untenanted.Log().find(t), std::string::npos) << untenanted.Log();
  // An id that is not one is refused, not read as 0 or clamped.
  for (const std::string bad : {"", "99999999999999999999", "x"}) {
    ChildProcess show_bad(BinaryPath("eventctl"), {"exhausted", "show", bad}, stack.Env());
    EXPECT_EQ(show_bad.Wait(std::chrono::seconds(20)), 2) << show_bad.Log();
    EXPECT_NE(show_bad.Log().find("is not an exhausted event id"), std::string::npos)
        << show_bad.Log();
  }
}

TEST(DlqWorker, ExhaustedListMatchesSubjectsLiterallySortsAndPrintsUtc) {
  Stack stack;
  const std::string t = UniqueName("lst");
  auto seed = [&](int id, const std::string& subject, const std::string& failed_at) {
    Exec(stack.Dsn(),
         "INSERT INTO events_ops.exhausted_events (id, idempotency_key, company_id, "
         "source_subject, error_class, reason, attempts, original_payload, first_failed_at, "
         "last_failed_at) VALUES (" +
             std::to_string(id) + ", 'k" + std::to_string(id) + "', '" + t + "', '" + subject +
             "', 'fatal', 'schema_violation: seeded', 1, '\\x7b7d', '" + failed_at + "', '" +
             failed_at + "')");
  };
  seed(1, "v1.chats.upsert." + t + "x1", "2026-11-25 10:00:00+00");
  seed(2, "v1.chats.upsert." + t + "_1", "2026-11-25 11:00:00+00");
  // The database's own time zone must not leak into the output or the --since parsing.
  Exec(stack.Dsn(),
       "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET timezone = %L', "
       "current_database(), 'Asia/Tokyo'); END $$");
  auto list = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"exhausted", "list", "--tenant", t});
    ChildProcess cli(BinaryPath("eventctl"), args, stack.Env());
    EXPECT_EQ(cli.Wait(std::chrono::seconds(20)), 0) << cli.Log();
    return cli.Log();
  };
  // '_' is literal: only row 2 has "_1" in its subject.
  const std::string literal = list({"--subject", "v1.chats.upsert." + t + "_1"});
  EXPECT_NE(literal.find("1 row(s)"), std::string::npos) << literal;
  const std::string wildcard = list({"--subject", "v1.chats.upsert." + t + "%"});
  EXPECT_NE(wildcard.find("2 row(s)"), std::string::npos) << wildcard;
  // Newest first keeps the latest failure under --limit.
  const std::string newest = list({"--newest", "--limit", "1", "--json"});
  EXPECT_NE(newest.find("\"id\":2"), std::string::npos) << newest;
  EXPECT_NE(newest.find("2026-11-25 11:00:00"), std::string::npos) << newest;
  const std::string since = list({"--since", "2026-11-25 10:30", "--json"});
  EXPECT_NE(since.find("\"id\":2"), std::string::npos) << since;
  EXPECT_EQ(since.find("\"id\":1"), std::string::npos) << since;
  // A time PostgreSQL cannot read is a usage error that names the option.
  for (const char* verb : {"list", "redrive"}) {
    ChildProcess bad(BinaryPath("eventctl"),
                     {"exhausted", verb, "--tenant", t, "--until", "2026-13-45"}, stack.Env());
    EXPECT_EQ(bad.Wait(std::chrono::seconds(20)), 2) << bad.Log();
    EXPECT_NE(bad.Log().find("--until: '2026-13-45' is not a time"), std::string::npos)
        << bad.Log();
  }
}

TEST(DlqWorker, LoadRunsStartedTogetherNeverShareMessageIds) {
  Stack stack;
  const std::string prefix = UniqueName("ld");
  const std::vector<std::string> args = {
      "load",  "--count",          "50", "--rate", "0", "--tenants", "1", "--tenant-prefix", prefix,
      "--mix", "messages.upsert=1"};
  // The second names the subject instead of the type: the same events.
  std::vector<std::string> by_subject = args;
  by_subject[by_subject.size() - 2] = "--subjects";
  by_subject.back() = "v1.messages.upsert.>";
  ChildProcess first(BinaryPath("eventctl"), args, stack.Env());
  ChildProcess second(BinaryPath("eventctl"), by_subject, stack.Env());
  EXPECT_EQ(first.Wait(std::chrono::seconds(60)), 0) << first.Log();
  EXPECT_EQ(second.Wait(std::chrono::seconds(60)), 0) << second.Log();
  EXPECT_NE(first.Log().find("50 acknowledged, 0 errors"), std::string::npos) << first.Log();
  // Unpaced, it publishes over 2 connections unless told otherwise.
  EXPECT_NE(first.Log().find("events/s over 2 connections"), std::string::npos) << first.Log();
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + prefix + "_t0000.messages", 100))
      << first.Log() << second.Log();
}

TEST(DlqWorker, PacedLoadPublishesItsRateForItsDuration) {
  // Events due within one pacing tick go out together; over the run the rate holds: 400
  // events/s for 1 s is 400 events (a few fewer if a worker is still behind at the end).
  Stack stack;
  const std::string prefix = UniqueName("pace");
  ChildProcess load(BinaryPath("eventctl"),
                    {"load", "--rate", "400", "--duration", "1s", "--tenants", "1",
                     "--tenant-prefix", prefix, "--mix", "messages.upsert=1", "--quiet"},
                    stack.Env());
  ASSERT_EQ(load.Wait(std::chrono::seconds(60)), 0) << load.Log();
  const size_t at = load.Log().find("published ");
  ASSERT_NE(at, std::string::npos) << load.Log();
  const int published = std::stoi(load.Log().substr(at + 10));
  EXPECT_LE(published, 400) << load.Log();
  EXPECT_GE(published, 390) << load.Log();
  const size_t in = load.Log().find(" in ", at);
  ASSERT_NE(in, std::string::npos) << load.Log();
  EXPECT_GE(std::stod(load.Log().substr(in + 4)), 0.99) << "published faster than paced";
  // Paced below 20,000 events/s, one connection: every further one costs its own client threads.
  EXPECT_NE(load.Log().find("events/s over 1 connection\n"), std::string::npos) << load.Log();
  EXPECT_TRUE(
      stack.WaitCount("SELECT count(*) FROM tenant_" + prefix + "_t0000.messages", published))
      << load.Log();
}

TEST(DlqWorker, PrebuiltLoadPublishesEveryEventAndSaysWhenPublishingStarted) {
  Stack stack;
  const std::string prefix = UniqueName("pb");
  const auto before =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  ChildProcess load(BinaryPath("eventctl"),
                    {"load", "--count", "30", "--rate", "0", "--tenants", "1", "--tenant-prefix",
                     prefix, "--mix", "messages.upsert=1", "--concurrency", "3", "--prebuild"},
                    stack.Env());
  EXPECT_EQ(load.Wait(std::chrono::seconds(60)), 0) << load.Log();
  EXPECT_NE(load.Log().find("30 acknowledged, 0 errors"), std::string::npos) << load.Log();
  EXPECT_NE(load.Log().find("events/s over 3 connections"), std::string::npos) << load.Log();
  const size_t at = load.Log().find("publishing from ");
  ASSERT_NE(at, std::string::npos) << load.Log();
  const double started = std::stod(load.Log().substr(at + 16));
  EXPECT_GE(started, before - 1) << load.Log();
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + prefix + "_t0000.messages", 30))
      << load.Log();
  // It needs a count and an unpaced run.
  ChildProcess paced(BinaryPath("eventctl"), {"load", "--rate", "10", "--prebuild"}, stack.Env());
  EXPECT_EQ(paced.Wait(std::chrono::seconds(30)), 2) << paced.Log();
  EXPECT_NE(paced.Log().find("--prebuild needs --count and --rate 0"), std::string::npos)
      << paced.Log();
}

// A history item exhausted alone goes back wrapped in an envelope of one item.
TEST(DlqWorker, RedriveOfAnExhaustedHistoryItemAppliesThatItem) {
  Stack stack;
  const std::string t = UniqueName("hredrive");
  const std::string s = "tenant_" + t;
  AddMessagesCheck(stack, t, "no_h2 CHECK (message_id <> 'h2')");
  ASSERT_TRUE(stack
                  .Publish("v1.history.messages." + t, "{\"messages\":[" + Message("h1") + "," +
                                                           Message("h2") + "," + Message("h3") +
                                                           "]}")
                  .ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events", 1));
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages", 3));
  EXPECT_EQ(QueryString(stack.Dsn(),
                        "SELECT convert_from(original_payload, 'UTF8') FROM "
                        "events_ops.exhausted_events"),
            Message("h2"));
  Exec(stack.Dsn(), "ALTER TABLE " + s + ".messages DROP CONSTRAINT no_h2");
  ChildProcess cli(BinaryPath("eventctl"), {"exhausted", "redrive", "--tenant", t}, stack.Env());
  ASSERT_EQ(cli.Wait(std::chrono::seconds(60)), 0) << cli.Log();
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM " + s + ".messages WHERE message_id = 'h2'", 1))
      << stack.Processor().Log();
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events"), 1)
      << "the redriven item applied: no new exhausted row";
}

// A row whose publish is refused (no stream captures its subject any more) stays unresolved;
// the rows that were published are resolved, and the command says what failed.
TEST(DlqWorker, RedriveResolvesOnlyTheEventsWhosePublishWasAcknowledged) {
  Stack stack;
  const std::string t = UniqueName("partial");
  ASSERT_TRUE(stack.Publish("v1.contacts.upsert." + t, "{\"one\"").ok);
  ASSERT_TRUE(stack.Publish("v1.contacts.upsert." + t, "{\"two\"").ok);
  ASSERT_TRUE(stack.WaitCount("SELECT count(*) FROM events_ops.exhausted_events", 2));
  const int64_t moved = QueryInt(stack.Dsn(), "SELECT min(id) FROM events_ops.exhausted_events");
  const int64_t kept = QueryInt(stack.Dsn(), "SELECT max(id) FROM events_ops.exhausted_events");
  Exec(stack.Dsn(), "UPDATE events_ops.exhausted_events SET source_subject = 'v9.gone." + t +
                        "' WHERE id = " + std::to_string(moved));
  ChildProcess cli(BinaryPath("eventctl"), {"exhausted", "redrive", "--tenant", t}, stack.Env());
  EXPECT_EQ(cli.Wait(std::chrono::seconds(60)), 1) << cli.Log();
  EXPECT_NE(cli.Log().find("id " + std::to_string(moved) + ": publish"), std::string::npos)
      << cli.Log();
  EXPECT_NE(cli.Log().find("redriven 1 event(s)"), std::string::npos) << cli.Log();
  // (The redriven body is still malformed: it comes back as a new, unresolved row.)
  auto resolved = [&](int64_t id) {
    return QueryString(stack.Dsn(),
                       "SELECT resolved::text FROM events_ops.exhausted_events "
                       "WHERE id = " +
                           std::to_string(id));
  };
  EXPECT_EQ(resolved(moved), "false");
  EXPECT_EQ(resolved(kept), "true");
}

TEST(DlqWorker, PoisonEventDoesNotDelayItsNeighbours) {
  Stack stack(Env{{"NAK_BASE_DELAY", "5s"}, {"NAK_MAX_DELAY", "10s"}});
  const std::string sick = UniqueName("sick");
  const std::string healthy = UniqueName("well");
  BreakMessagesTable(stack, sick);
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + healthy, Message("first")).ok);
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + sick, Message("poison")).ok);
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + healthy, Message("second")).ok);
  // Far sooner than the 5 s redelivery delay the poison event got.
  EXPECT_TRUE(stack.WaitCount("SELECT count(*) FROM tenant_" + healthy + ".messages", 2,
                              std::chrono::seconds(3)));
}

}  // namespace
}  // namespace evp::testing

namespace evp::testing {
namespace {

// An event JetStream stops delivering (MaxDeliver reached without an ack, as when the
// processor crashes on it every time) is caught from the MAX_DELIVERIES advisory and retried.
TEST(DlqWorker, EventThatReachedMaxDeliverWithoutOutcomeIsRecoveredFromTheAdvisory) {
  Stack stack(Env{{"MAX_DELIVER", "2"}, {"ACK_WAIT", "1s"}, {"DLQ_BASE_DELAY", "100ms"}});
  stack.Processor().Signal(SIGTERM);
  ASSERT_TRUE(stack.Processor().Wait(std::chrono::seconds(30)).has_value());
  const std::string t = UniqueName("maxdel");
  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, Message("orphan")).ok);
  // Play a processor that crashes on the event: take it twice and never answer.
  TestPublisher client(stack.Nats().Url());
  natsSubscription* sub = nullptr;
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = "EVENTS_REALTIME";
  so.Consumer = "events-processor-realtime";
  ASSERT_EQ(js_PullSubscribe(&sub, client.JetStream(), "", "events-processor-realtime", nullptr,
                             &so, nullptr),
            NATS_OK);
  int deliveries = 0;
  ASSERT_TRUE(WaitFor([&] {
    natsMsgList list{};
    if (natsSubscription_Fetch(&list, sub, 1, 500, nullptr) == NATS_OK) deliveries += list.Count;
    natsMsgList_Destroy(&list);
    return deliveries >= 2;
  }));
  // JetStream notices the exceeded limit when the consumer is next pulled, as a running
  // processor does all the time.
  const bool recovered = WaitFor(
      [&] {
        natsMsgList list{};
        natsSubscription_Fetch(&list, sub, 1, 200, nullptr);
        natsMsgList_Destroy(&list);
        return stack.Count("SELECT count(*) FROM tenant_" + t +
                           ".messages WHERE message_id = 'orphan'") == 1;
      },
      std::chrono::seconds(30));
  natsSubscription_Destroy(sub);
  ASSERT_TRUE(recovered) << stack.WorkerLogs();
  EXPECT_NE(stack.WorkerLogs().find("reached MaxDeliver"), std::string::npos);
  EXPECT_EQ(stack.Count("SELECT count(*) FROM events_ops.exhausted_events"), 0);
}

}  // namespace
}  // namespace evp::testing
