// The chaos suite (ctest label `chaos`): each TEST starts its own nats-server -js and
// PostgreSQL, runs events-processor and dlq-worker as child processes, publishes
// CHAOS_EVENTS events (~1 % deliberately bad, of every kind) while injecting one kind of fault,
// then proves from PostgreSQL and JetStream that nothing was lost or doubled and that the
// tables hold exactly the state computed from what was published. See docs/reliability.md.
#include <gtest/gtest.h>

#include <csignal>
#include <nlohmann/json.hpp>
#include <sstream>

#include "chaos/harness.hpp"
#include "support/db.hpp"

namespace evp::chaos {
namespace {

using testing::Exec;
using testing::QueryInt;
using testing::TableHasRows;
using testing::TryQueryInt;
using testing::WaitFor;
using Clock = std::chrono::steady_clock;

// Fixed, so that a seed replays byte-identical events (timestamps in the past are valid).
constexpr int64_t kBaseTime = 1'700'000'000;

const Settings& S() { return Settings::Get(); }
int64_t N() { return S().events; }

WorkloadSpec Spec(std::vector<std::string> tenants, const std::string& prefix = "e") {
  WorkloadSpec spec;
  spec.events = N();
  spec.tenants = std::move(tenants);
  spec.seed = S().seed;
  spec.id_prefix = prefix;
  spec.base_time = kBaseTime;
  spec.max_event_bytes = 65'536;  // the stack's MAX_EVENT_BYTES
  return spec;
}

LoadPublisher::Options Publishing(double rate = 0) {
  LoadPublisher::Options o;
  o.threads = S().publishers;
  o.rate = rate;
  return o;
}

// How long the end-of-run accounting may wait for the backlog to drain.
milliseconds SettleDeadline() { return milliseconds(180'000 + N() * 3); }
milliseconds FaultDeadline() { return milliseconds(120'000 + N() * 2); }

uint64_t Point(double share) { return static_cast<uint64_t>(static_cast<double>(N()) * share); }

// Every binary the test did not stop is still running: a crash (abort, heap corruption) is
// a failure even when redelivery to a sibling hid it from the accounting.
void CheckProcesses(ChaosStack& stack, Report& report) {
  const auto exits = stack.UnexpectedExits();
  std::string text;
  for (const auto& e : exits) text += (text.empty() ? "" : "; ") + e;
  report.extra.emplace_back("unexpected exits", exits.empty() ? "0" : text);
  EXPECT_TRUE(exits.empty()) << text;
}

void ExpectClean(const Tally& t) {
  EXPECT_GT(t.published, 0);
  EXPECT_EQ(t.lost, 0) << "lost = published - applied - superseded - exhausted";
  EXPECT_EQ(t.duplicates, 0);
  EXPECT_EQ(t.unexpected_exhausted, 0) << "valid events must never be exhausted here";
  EXPECT_EQ(t.wrong_reason, 0);
  EXPECT_EQ(t.wrong_payload, 0) << "exhausted rows keep the exact original bytes";
  EXPECT_EQ(t.wrong_source, 0);
  EXPECT_EQ(t.stray_exhausted, 0);
  EXPECT_EQ(t.unexpected_rows, 0);
  EXPECT_EQ(t.state_mismatch, 0) << "final tables differ from the state computed from the load";
  EXPECT_EQ(t.schema_mismatch, 0);
  EXPECT_EQ(t.published, t.applied + t.superseded + t.exhausted + t.lost);
}

std::string Fmt(double v, int prec = 1) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

// Every bad kind appears in the exhausted store with its reason (at any size >= 1,000).
void ExpectEveryBadKind(const Tally& t) {
  if (N() < 1'000) return;
  for (const char* reason : {"malformed_json", "schema_violation", "tenant_mismatch",
                             "invalid_tenant", "too_large", "unknown_type"}) {
    EXPECT_GT(t.exhausted_by_reason.count(reason) ? t.exhausted_by_reason.at(reason) : 0, 0)
        << reason;
  }
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 of the processor five times during the load.
TEST(Chaos, ProcessorKilledFiveTimesDuringLoadLosesNothing) {
  Announce("kill9_processor_x5");
  ChaosStack stack(Options({{"ACK_WAIT", "2s"}}));
  Ledger ledger;
  ledger.Add(Workload::Generate(Spec(TenantIds(20))));
  LoadPublisher pub(stack.Nats().Url(), ledger, 0, ledger.events.size(), Publishing());
  double recovery = 0;
  for (int k = 1; k <= 5; ++k) {
    ASSERT_TRUE(stack.WaitProgress(Point(k / 6.0), FaultDeadline()))
        << "no progress to " << Point(k / 6.0) << " before kill " << k;
    stack.KillProcessor(0);
    stack.StartProcessor(0);
    const double ready = stack.WaitProcessorReady(0);
    ASSERT_GE(ready, 0) << "processor not ready after kill " << k;
    recovery = std::max(recovery, ready);
    std::cout << "[chaos] kill -9 #" << k << " at ack floor >= " << Point(k / 6.0)
              << ", ready again after " << Fmt(ready, 2) << " s" << std::endl;
  }
  Report report("kill -9 processor x5", N());
  report.publish_s = pub.Join();
  report.tally = Settle(stack, ledger, SettleDeadline(), &report.drain_s);
  report.redeliveries = stack.Realtime().Redeliveries();
  report.recovery_s = recovery;
  report.peak_rss_mb = stack.PeakProcessorRssMb();
  CheckProcesses(stack, report);
  report.Print();
  ExpectClean(report.tally);
  ExpectEveryBadKind(report.tally);
}

// ---------------------------------------------------------------------------------------------
// 2. SIGTERM during the load: drains within SHUTDOWN_GRACE, exits 0, leaves nothing unacked.
// The last `n` lines of `log` that do not contain `skip`.
std::string LastLinesWithout(const std::string& log, const std::string& skip, size_t n) {
  std::vector<std::string> kept;
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    if (line.find(skip) == std::string::npos) kept.push_back(line);
  }
  std::string out;
  for (size_t i = kept.size() > n ? kept.size() - n : 0; i < kept.size(); ++i) {
    out += kept[i] + "\n";
  }
  return out;
}

TEST(Chaos, SigtermDuringLoadDrainsAndExitsZero) {
  Announce("sigterm_processor");
  constexpr int kGraceSeconds = 10;
  ChaosStack stack(Options({{"SHUTDOWN_GRACE", std::to_string(kGraceSeconds) + "s"}}));
  Ledger ledger;
  ledger.Add(Workload::Generate(Spec(TenantIds(20))));
  LoadPublisher pub(stack.Nats().Url(), ledger, 0, ledger.events.size(), Publishing());
  ASSERT_TRUE(stack.WaitProgress(Point(0.4), FaultDeadline()));
  const ConsumerState before = stack.Realtime();
  double took = 0;
  const auto rc = stack.TerminateProcessor(0, milliseconds((kGraceSeconds + 20) * 1000), &took);
  // nats-server applies acks asynchronously (queued per consumer), so the last acks of the
  // exited process may still be in its queue: give it a moment far below ACK_WAIT (30 s). A
  // message the process did not settle stays ack-pending until ACK_WAIT.
  const ConsumerState at_exit = stack.Realtime();
  ConsumerState settled = at_exit;
  const auto exited = Clock::now();
  WaitFor(
      [&] {
        settled = stack.Realtime();
        return settled.ok && settled.num_ack_pending == 0;
      },
      seconds(3));
  const double settle_s = std::chrono::duration<double>(Clock::now() - exited).count();
  EXPECT_EQ(rc, 0) << "exit code after SIGTERM";
  EXPECT_LE(took, kGraceSeconds) << "exit within SHUTDOWN_GRACE";
  EXPECT_EQ(settled.num_ack_pending, 0)
      << "in-flight batch settled before exit (" << at_exit.num_ack_pending
      << " ack-pending right at exit); the stopped processor's last log lines:\n"
      << LastLinesWithout(stack.ProcessorLogs(), "dead-lettered", 12);
  stack.StartProcessor(0);
  const double ready = stack.WaitProcessorReady(0);
  ASSERT_GE(ready, 0);

  Report report("SIGTERM processor", N());
  report.publish_s = pub.Join();
  report.tally = Settle(stack, ledger, SettleDeadline(), &report.drain_s);
  const ConsumerState end = stack.Realtime();
  report.redeliveries = end.Redeliveries();
  report.recovery_s = ready;
  report.peak_rss_mb = stack.PeakProcessorRssMb();
  report.extra = {
      {"exit code", rc ? std::to_string(*rc) : "timeout"},
      {"exit took s", Fmt(took, 2)},
      {"unacked at exit / after s", std::to_string(at_exit.num_ack_pending) + " / " +
                                        std::to_string(settled.num_ack_pending) + " after " +
                                        Fmt(settle_s, 2)},
      {"redeliveries before SIGTERM / at exit",
       std::to_string(before.Redeliveries()) + " / " + std::to_string(at_exit.Redeliveries())}};
  CheckProcesses(stack, report);
  report.Print();
  ExpectClean(report.tally);
  // "~0 redeliveries": nothing the stopped process had fetched waits for AckWait.
  EXPECT_LE(report.redeliveries, static_cast<uint64_t>(N() / 1000 + 5))
      << "before SIGTERM " << before.Redeliveries() << ", at exit " << at_exit.Redeliveries();
}

// ---------------------------------------------------------------------------------------------
// 3a. PostgreSQL restarted (fast shutdown, start again) in the middle of the load.
TEST(Chaos, PostgresRestartDuringLoadExhaustsNothing) {
  Announce("postgres_restart");
  ChaosStack stack(Options({}, /*private_postgres=*/true));
  ASSERT_NE(stack.PrivatePostgres(), nullptr);
  Ledger ledger;
  ledger.Add(Workload::Generate(Spec(TenantIds(20))));
  LoadPublisher pub(stack.Nats().Url(), ledger, 0, ledger.events.size(), Publishing(S().rate));
  double recovery = 0;
  for (double at : {0.3, 0.6}) {
    ASSERT_TRUE(stack.WaitProgress(Point(at), FaultDeadline()));
    stack.PrivatePostgres()->Stop();
    stack.PrivatePostgres()->Start();
    const auto t0 = Clock::now();
    ASSERT_TRUE(
        WaitFor([&] { return stack.ProcessorReady(0) && stack.WorkerReady(); }, seconds(60)));
    recovery = std::max(recovery, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  Report report("PostgreSQL restart x2", N());
  report.publish_s = pub.Join();
  report.tally = Settle(stack, ledger, SettleDeadline(), &report.drain_s);
  report.redeliveries = stack.Realtime().Redeliveries();
  report.recovery_s = recovery;
  report.peak_rss_mb = stack.PeakProcessorRssMb();
  CheckProcesses(stack, report);
  report.Print();
  ExpectClean(report.tally);
  EXPECT_EQ(report.tally.exhausted_by_reason.count("retries_exhausted"), 0u);
  EXPECT_EQ(report.tally.exhausted_by_reason.count("not_found_after_grace"), 0u);
}

// 3b. PostgreSQL down for 30 s (CHAOS_PG_OUTAGE_SECONDS) during the load.
TEST(Chaos, PostgresOutageOf30SecondsExhaustsNothingAndRecovers) {
  Announce("postgres_outage");
  ChaosStack stack(Options({}, /*private_postgres=*/true));
  ASSERT_NE(stack.PrivatePostgres(), nullptr);
  Ledger ledger;
  ledger.Add(Workload::Generate(Spec(TenantIds(20))));
  LoadPublisher pub(stack.Nats().Url(), ledger, 0, ledger.events.size(), Publishing(S().rate));
  ASSERT_TRUE(stack.WaitProgress(Point(0.3), FaultDeadline()));
  const uint64_t floor_before = stack.Progress();
  stack.PrivatePostgres()->Stop();
  const auto stopped_at = Clock::now();
  const bool processor_unready = WaitFor([&] { return !stack.ProcessorReady(0); }, seconds(20));
  const bool worker_unready = WaitFor([&] { return !stack.WorkerReady(); }, seconds(20));
  EXPECT_TRUE(processor_unready) << "/readyz of the processor must go false";
  EXPECT_TRUE(worker_unready) << "/readyz of the worker must go false";
  // The outage itself: both processes must stay up and not ready the whole time.
  bool stayed_unready = true;
  bool stayed_up = true;
  const auto outage = seconds(S().outage_seconds);
  while (Clock::now() - stopped_at < outage) {
    stayed_unready = stayed_unready && !stack.ProcessorReady(0);
    stayed_up = stayed_up && stack.ProcessorRunning(0);
    std::this_thread::sleep_for(milliseconds(250));  // the fault's duration, not a sync
  }
  const uint64_t floor_during = stack.Progress();
  stack.PrivatePostgres()->Start();
  const auto t0 = Clock::now();
  const bool ready_again =
      WaitFor([&] { return stack.ProcessorReady(0) && stack.WorkerReady(); }, seconds(60));
  const double recovery = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_TRUE(ready_again) << "/readyz must come back after PostgreSQL does";
  EXPECT_TRUE(stayed_up);
  EXPECT_TRUE(stayed_unready);

  Report report("PostgreSQL down " + std::to_string(S().outage_seconds) + " s", N());
  report.publish_s = pub.Join();
  report.tally = Settle(stack, ledger, SettleDeadline(), &report.drain_s);
  report.redeliveries = stack.Realtime().Redeliveries();
  report.recovery_s = recovery;
  report.peak_rss_mb = stack.PeakProcessorRssMb();
  report.extra = {
      {"readyz false during outage", processor_unready && stayed_unready ? "yes" : "NO"},
      {"ack floor before/after outage",
       std::to_string(floor_before) + "/" + std::to_string(floor_during)}};
  CheckProcesses(stack, report);
  report.Print();
  ExpectClean(report.tally);
  EXPECT_EQ(report.tally.exhausted_by_reason.count("retries_exhausted"), 0u);
  EXPECT_EQ(report.tally.exhausted_by_reason.count("not_found_after_grace"), 0u);
}

// ---------------------------------------------------------------------------------------------
// 4. nats-server restarted twice (graceful, file store kept) during the load.
TEST(Chaos, NatsServerRestartLosesNothing) {
  Announce("nats_restart");
  ChaosStack stack;
  Ledger ledger;
  ledger.Add(Workload::Generate(Spec(TenantIds(20))));
  LoadPublisher pub(stack.Nats().Url(), ledger, 0, ledger.events.size(), Publishing(S().rate));
  double recovery = 0;
  for (double at : {0.3, 0.6}) {
    ASSERT_TRUE(stack.WaitProgress(Point(at), FaultDeadline()));
    stack.Nats().Stop();
    EXPECT_TRUE(WaitFor([&] { return !stack.ProcessorReady(0); }, seconds(20)))
        << "/readyz must go false without NATS";
    stack.Nats().Start();
    const auto t0 = Clock::now();
    ASSERT_TRUE(
        WaitFor([&] { return stack.ProcessorReady(0) && stack.WorkerReady(); }, seconds(60)))
        << "consumers did not resume";
    recovery = std::max(recovery, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  Report report("nats-server restart x2", N());
  report.publish_s = pub.Join();
  report.tally = Settle(stack, ledger, SettleDeadline(), &report.drain_s);
  report.redeliveries = stack.Realtime().Redeliveries();
  report.recovery_s = recovery;
  report.peak_rss_mb = stack.PeakProcessorRssMb();
  report.extra = {{"publish retries", std::to_string(pub.Retries())}};
  CheckProcesses(stack, report);
  report.Print();
  ExpectClean(report.tally);
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9 of the DLQ worker while it retries events of two broken tenants.
std::vector<std::pair<uint64_t, int64_t>> RetryAttemptsFromLog(const std::string& log) {
  // (stream_seq, attempts) of every "retry failed; rescheduled" line, in log order.
  std::vector<std::pair<uint64_t, int64_t>> out;
  std::istringstream in(log);
  std::string line;
  auto num = [](const nlohmann::json& v) -> int64_t {
    if (v.is_number()) return v.get<int64_t>();
    if (v.is_string()) return std::atoll(v.get<std::string>().c_str());
    return -1;
  };
  while (std::getline(in, line)) {
    if (line.find("retry failed; rescheduled") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("stream_seq") || !j.contains("attempts")) continue;
    out.emplace_back(static_cast<uint64_t>(num(j["stream_seq"])), num(j["attempts"]));
  }
  return out;
}

TEST(Chaos, DlqWorkerKilledMidRetryKeepsAttemptCounts) {
  Announce("kill9_dlq_worker");
  constexpr int kMaxAttempts = 6;
  ChaosStack stack(Options({{"MAX_DELIVER", "2"},
                            {"DLQ_BASE_DELAY", "500ms"},
                            {"DLQ_MAX_DELAY", "2s"},
                            {"DLQ_MAX_ATTEMPTS", std::to_string(kMaxAttempts)},
                            {"DLQ_ACK_WAIT", "2s"}}));
  std::vector<std::string> tenants = TenantIds(20);
  const int heal = static_cast<int>(tenants.size());
  const int dead = heal + 1;
  tenants.emplace_back("chaos_sick_heal");  // broken, repaired after the kill
  tenants.emplace_back("chaos_sick_dead");  // broken until its events are exhausted
  Ledger ledger;
  // Seed one row per broken tenant so that its schema exists, then hide its messages table:
  // every messages.upsert for it fails transiently (undefined table) while PostgreSQL is up.
  for (int t : {heal, dead}) {
    WorkloadSpec seed = Spec(tenants, "seed" + std::to_string(t));
    seed.events = 1;
    seed.messages_only = true;
    seed.tenant_weights.assign(tenants.size(), 0.0);
    seed.tenant_weights[static_cast<size_t>(t)] = 1.0;
    const size_t first = ledger.Add(Workload::Generate(seed));
    LoadPublisher(stack.Nats().Url(), ledger, first, 1, Publishing()).Join();
    ASSERT_TRUE(WaitFor([&] {
      try {
        return TableHasRows(stack.Dsn(), SchemaOf(tenants[static_cast<size_t>(t)]) + ".messages");
      } catch (const std::exception&) {
        return false;
      }
    }));
    Exec(stack.Dsn(), "ALTER TABLE " + SchemaOf(tenants[static_cast<size_t>(t)]) +
                          ".messages RENAME TO messages_hidden");
  }
  WorkloadSpec spec = Spec(tenants);
  spec.tenant_weights.assign(tenants.size(), 1.0);
  // About 0.5 % of the load for each broken tenant.
  spec.tenant_weights[static_cast<size_t>(heal)] = spec.tenant_weights[static_cast<size_t>(dead)] =
      20 * 0.005 / 0.99;
  spec.upsert_only_tenants = {heal, dead};
  const size_t first = ledger.Add(Workload::Generate(spec));
  int64_t sick = 0;
  int64_t sick_dead = 0;
  for (size_t i = first; i < ledger.events.size(); ++i) {
    if (ledger.events[i].tenant == heal || ledger.events[i].tenant == dead) ++sick;
    if (ledger.events[i].tenant == dead) ++sick_dead;
  }
  ASSERT_GT(sick_dead, 0);
  LoadPublisher pub(stack.Nats().Url(), ledger, first, ledger.events.size() - first, Publishing());

  const std::string scheduled = R"(evp_dlq_messages_total{outcome="retry_scheduled"})";
  const double kill_at = std::max<double>(3, static_cast<double>(sick) / 4);
  ASSERT_TRUE(
      WaitFor([&] { return Metric(stack.WorkerPort(), scheduled) >= kill_at; }, FaultDeadline()))
      << "the worker never retried";
  const double scheduled_before_kill = Metric(stack.WorkerPort(), scheduled);
  stack.KillWorker();
  stack.StartWorker();
  const double recovery = stack.WaitWorkerReady();
  ASSERT_GE(recovery, 0);
  Exec(stack.Dsn(), "ALTER TABLE " + SchemaOf(tenants[static_cast<size_t>(heal)]) +
                        ".messages_hidden RENAME TO messages");
  const double publish_s = pub.Join();
  // The dead tenant's events must all be exhausted before its table comes back.
  const std::string dead_rows =
      "SELECT count(*) FROM events_ops.exhausted_events WHERE company_id = '" +
      tenants[static_cast<size_t>(dead)] + "'";
  EXPECT_TRUE(WaitFor([&] { return TryQueryInt(stack.Dsn(), dead_rows).value_or(-1) >= sick_dead; },
                      SettleDeadline()))
      << TryQueryInt(stack.Dsn(), dead_rows).value_or(-1) << " of " << sick_dead;
  Exec(stack.Dsn(), "ALTER TABLE " + SchemaOf(tenants[static_cast<size_t>(dead)]) +
                        ".messages_hidden RENAME TO messages");

  // Isolation: only the broken tenants' events may reach the DLQ as retries_exhausted; a
  // failed batch that dragged healthy neighbours along would send them there too.
  const double processor_retry_dead_letters =
      MetricSum(stack.ProcessorPort(0), "evp_dead_letters_total", R"(reason="retries_exhausted")");
  Report report("kill -9 DLQ worker mid-retry", N());
  report.publish_s = publish_s;
  report.tally = Settle(stack, ledger, SettleDeadline(), &report.drain_s);
  report.redeliveries = stack.Realtime().Redeliveries();
  report.recovery_s = recovery;
  report.peak_rss_mb = stack.PeakProcessorRssMb();

  // Attempt counts: exhausted retryable rows carry exactly DLQ_MAX_ATTEMPTS, and no event's
  // attempt number ever goes back (a reset by the restart would).
  const int64_t wrong_attempts =
      QueryInt(stack.Dsn(),
               "SELECT count(*) FROM events_ops.exhausted_events WHERE reason_code = "
               "'retries_exhausted' AND (attempts <> " +
                   std::to_string(kMaxAttempts) + " OR error_class <> 'retryable')");
  const int64_t heal_exhausted = QueryInt(
      stack.Dsn(), "SELECT count(*) FROM events_ops.exhausted_events WHERE company_id = '" +
                       tenants[static_cast<size_t>(heal)] + "'");
  const int64_t dead_in_table =
      QueryInt(stack.Dsn(), "SELECT count(*) FROM " + SchemaOf(tenants[static_cast<size_t>(dead)]) +
                                ".messages WHERE message_id NOT LIKE 'seed%'");
  // Retries per event from both workers' logs. Each event logs attempts 2 .. kMaxAttempts-1
  // at most once each, plus at most one repeat when its DLQ message was in flight at the kill
  // (redelivered after DLQ_ACK_WAIT; the republished next attempt is deduplicated by its
  // Nats-Msg-Id). A count that restarted from the beginning would log far more.
  std::map<uint64_t, std::map<int64_t, int>> per_event;
  const auto attempts = RetryAttemptsFromLog(stack.WorkerLogs());
  for (const auto& [seq, n] : attempts) per_event[seq][n]++;
  int64_t resets = 0;
  int64_t repeats = 0;
  size_t max_lines = 0;
  for (const auto& [seq, counts] : per_event) {
    size_t lines = 0;
    int extra = 0;
    bool out_of_range = false;
    for (const auto& [n, c] : counts) {
      lines += static_cast<size_t>(c);
      extra += c - 1;
      out_of_range = out_of_range || n < 2 || n >= kMaxAttempts;
    }
    repeats += extra;
    max_lines = std::max(max_lines, lines);
    if (extra > 1 || out_of_range) {
      ++resets;
      std::cout << "[chaos] event at stream seq " << seq << " retried " << lines << " times:";
      for (const auto& [n, c] : counts) std::cout << " attempt " << n << " x" << c;
      std::cout << std::endl;
    }
  }
  report.extra = {
      {"broken-tenant events / sent to the DLQ as retries_exhausted",
       std::to_string(sick) + " / " + Fmt(processor_retry_dead_letters, 0)},
      {"retries scheduled before kill", Fmt(scheduled_before_kill, 0)},
      {"healed tenant: exhausted / applied",
       std::to_string(heal_exhausted) + " / " + std::to_string(sick - sick_dead - heal_exhausted)},
      {"dead tenant exhausted", std::to_string(sick_dead)},
      {"retries logged / most for one event",
       std::to_string(attempts.size()) + " / " + std::to_string(max_lines)},
      {"attempt resets", std::to_string(resets)},
      {"attempts repeated (in flight at the kill)", std::to_string(repeats)},
      {"exhausted rows with attempts != " + std::to_string(kMaxAttempts),
       std::to_string(wrong_attempts)}};
  CheckProcesses(stack, report);
  report.Print();
  ExpectClean(report.tally);
  EXPECT_EQ(wrong_attempts, 0);
  // The healed tenant's events published after the repair never needed the DLQ.
  EXPECT_LE(processor_retry_dead_letters, static_cast<double>(sick))
      << "healthy events of a batch with a failing tenant went to the DLQ too";
  EXPECT_GE(processor_retry_dead_letters, static_cast<double>(sick_dead));
  EXPECT_EQ(resets, 0) << "an attempt count went back after the worker restart";
  EXPECT_EQ(dead_in_table, 0) << "exhausted events of the dead tenant were applied too";
  EXPECT_GT(attempts.size(), 0u);
}

// ---------------------------------------------------------------------------------------------
// 6. 1 % poison mix: valid events' publish -> visible latency is the same as without poison.
TEST(Chaos, PoisonMixCausesNoHeadOfLineBlocking) {
  Announce("poison_mix_latency");
  ChaosStack stack;
  const std::vector<std::string> tenants = TenantIds(20);
  WorkloadSpec clean = Spec(tenants, "clean");
  clean.events = N() / 2;
  clean.bad_share = 0;
  WorkloadSpec poison = Spec(tenants, "poison");
  poison.events = N() / 2;
  poison.seed = S().seed + 1;
  Ledger ledger;
  // Warm-up with the same mix: schemas, tables and prepared statements of every tenant exist
  // before anything is measured.
  WorkloadSpec warm = Spec(tenants, "warm");
  warm.events = std::min<int64_t>(N() / 2, 2'000);
  warm.bad_share = 0;
  warm.seed = S().seed + 2;
  ledger.Add(Workload::Generate(warm));
  LoadPublisher(stack.Nats().Url(), ledger, 0, ledger.events.size(), Publishing()).Join();
  ASSERT_EQ(Settle(stack, ledger, SettleDeadline(), nullptr).lost, 0);
  const size_t clean_first = ledger.Add(Workload::Generate(clean));
  const size_t poison_first = ledger.Add(Workload::Generate(poison));
  VisibilityProbe probe(stack.Dsn(), ledger);
  auto sampled = [&](size_t i) {
    return ledger.events[i].kind == Kind::kMessageUpsert && i % 10 == 0;
  };
  auto run_phase = [&](size_t first, size_t count) {
    LoadPublisher::Options o = Publishing(S().rate);
    o.on_acked = [&](size_t i) {
      if (sampled(i)) probe.Add(i);
    };
    LoadPublisher pub(stack.Nats().Url(), ledger, first, count, o);
    const double s = pub.Join();
    EXPECT_TRUE(WaitFor([&] { return probe.Outstanding() == 0; }, SettleDeadline()));
    return s;
  };
  const double clean_s = run_phase(clean_first, poison_first - clean_first);
  const double poison_s = run_phase(poison_first, ledger.events.size() - poison_first);

  Report report("1 % poison mix, no head-of-line blocking", N());
  report.publish_s = clean_s + poison_s;
  report.tally =
      Settle(stack, ledger, SettleDeadline(), &report.drain_s, {.collect_latency = true});
  report.redeliveries = stack.Realtime().Redeliveries();
  report.peak_rss_mb = stack.PeakProcessorRssMb();
  std::vector<int64_t> vis_clean, vis_poison, row_clean, row_poison;
  for (const auto& [i, us] : probe.Results())
    (i < poison_first ? vis_clean : vis_poison).push_back(us);
  for (const auto& [i, us] : report.tally.upsert_latency_us) {
    if (i >= clean_first) (i < poison_first ? row_clean : row_poison).push_back(us);
  }
  const double p50c = PercentileMs(vis_clean, 50), p99c = PercentileMs(vis_clean, 99);
  const double p50p = PercentileMs(vis_poison, 50), p99p = PercentileMs(vis_poison, 99);
  report.extra = {
      {"offered rate /s", Fmt(S().rate, 0)},
      {"visible p50/p99 ms without poison",
       Fmt(p50c) + " / " + Fmt(p99c) + " (n=" + std::to_string(vis_clean.size()) + ")"},
      {"visible p50/p99 ms with 1 % poison",
       Fmt(p50p) + " / " + Fmt(p99p) + " (n=" + std::to_string(vis_poison.size()) + ")"},
      {"row created_at p99 ms without/with poison",
       Fmt(PercentileMs(row_clean, 99)) + " / " + Fmt(PercentileMs(row_poison, 99))}};
  CheckProcesses(stack, report);
  report.Print();
  ExpectClean(report.tally);
  ExpectEveryBadKind(report.tally);
  ASSERT_FALSE(vis_clean.empty());
  ASSERT_FALSE(vis_poison.empty());
  // Head-of-line blocking would add a redelivery delay (NAK_BASE_DELAY and up) or a batch
  // retry to the neighbours of every poison event; allow for the machine's noise only.
  EXPECT_LE(p99p, std::max(3 * p99c, p99c + 250.0)) << "poison events delay their valid neighbours";
}

// ---------------------------------------------------------------------------------------------
// 7. 1,000 tenants (CHAOS_TENANTS), one of them 50 % of the load.
TEST(Chaos, ThousandTenantsWithOneHotTenantNoneStarves) {
  Announce("many_tenants_one_hot");
  ChaosStack stack;
  const int T = S().tenants;
  // Mixed case: the schema must be tenant_<lower(id)>.
  const std::vector<std::string> tenants = TenantIds(T, "Chaos_T");
  WorkloadSpec spec = Spec(tenants);
  spec.tenant_weights.assign(tenants.size(), 1.0);
  spec.tenant_weights[0] = T - 1;  // the hot tenant: half of everything
  spec.chats_per_tenant = 10;
  Ledger ledger;
  ledger.Add(Workload::Generate(spec));
  LoadPublisher pub(stack.Nats().Url(), ledger, 0, ledger.events.size(), Publishing());
  Report report(std::to_string(T) + " tenants, one at 50 %", N());
  report.publish_s = pub.Join();
  report.tally =
      Settle(stack, ledger, SettleDeadline(), &report.drain_s, {.collect_latency = true});
  report.redeliveries = stack.Realtime().Redeliveries();
  report.peak_rss_mb = stack.PeakProcessorRssMb();

  std::vector<int64_t> hot, cold;
  std::map<int, int64_t> worst;  // tenant -> worst latency
  for (const auto& [i, us] : report.tally.upsert_latency_us) {
    const int t = ledger.events[i].tenant;
    (t == 0 ? hot : cold).push_back(us);
    worst[t] = std::max(worst[t], us);
  }
  int64_t worst_cold = 0;
  for (const auto& [t, us] : worst) {
    if (t != 0) worst_cold = std::max(worst_cold, us);
  }
  std::set<int> with_events;
  for (const auto& e : ledger.events) {
    if (!IsBad(e.kind) && e.tenant >= 0) with_events.insert(e.tenant);
  }
  const int64_t schemas = QueryInt(
      stack.Dsn(), "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_chaos\\_t%'");
  report.extra = {
      {"tenants with valid events / schemas",
       std::to_string(with_events.size()) + " / " + std::to_string(schemas)},
      {"hot tenant latency p50/p99 ms",
       Fmt(PercentileMs(hot, 50)) + " / " + Fmt(PercentileMs(hot, 99))},
      {"other tenants latency p50/p99 ms",
       Fmt(PercentileMs(cold, 50)) + " / " + Fmt(PercentileMs(cold, 99))},
      {"worst tenant latency ms (not hot)", Fmt(static_cast<double>(worst_cold) / 1000.0)}};
  CheckProcesses(stack, report);
  report.Print();
  ExpectClean(report.tally);
  EXPECT_EQ(schemas, static_cast<int64_t>(with_events.size()));
  // Starvation would leave the small tenants waiting for the hot one's backlog: their
  // latency must stay in the range of the hot tenant's, not beyond the whole drain.
  EXPECT_LE(PercentileMs(cold, 99),
            std::max(3 * PercentileMs(hot, 99), PercentileMs(hot, 99) + 5'000));
}

// ---------------------------------------------------------------------------------------------
// 8. The same events published again with new Nats-Msg-Ids (as after the dedup window).
TEST(Chaos, RepublishAfterDedupWindowLeavesStateUnchanged) {
  Announce("republish_same_bodies");
  ChaosStack stack;
  const std::vector<std::string> tenants = TenantIds(20);
  const Workload original = Workload::Generate(Spec(tenants));
  Ledger ledger;
  ledger.Add(original);
  LoadPublisher(stack.Nats().Url(), ledger, 0, ledger.events.size(), Publishing()).Join();
  double first_drain = 0;
  const Tally first = Settle(stack, ledger, SettleDeadline(), &first_drain);
  ExpectClean(first);
  const auto digest_before = TableDigests(stack.Dsn(), tenants);
  const int64_t exhausted_before =
      QueryInt(stack.Dsn(), "SELECT count(*) FROM events_ops.exhausted_events");

  // Within the dedup window, the same Nats-Msg-Ids are dropped by JetStream itself.
  Workload same_ids = original;
  same_ids.events.resize(std::min<size_t>(200, same_ids.events.size()));
  const size_t dup_first = ledger.Add(same_ids);
  LoadPublisher(stack.Nats().Url(), ledger, dup_first, same_ids.events.size(), Publishing()).Join();
  int64_t deduplicated = 0;
  for (size_t i = dup_first; i < ledger.events.size(); ++i)
    deduplicated += ledger.records[i].duplicate;
  EXPECT_EQ(deduplicated, static_cast<int64_t>(same_ids.events.size()));

  // After it: fresh ids, same bodies. New stream messages, same effects.
  const size_t again_first = ledger.Add(original.Republished("-again"));
  LoadPublisher pub(stack.Nats().Url(), ledger, again_first, original.events.size(), Publishing());
  Report report("republish with new Nats-Msg-Ids", N());
  report.publish_s = pub.Join();
  report.tally = Settle(stack, ledger, SettleDeadline(), &report.drain_s);
  report.redeliveries = stack.Realtime().Redeliveries();
  report.peak_rss_mb = stack.PeakProcessorRssMb();
  const auto digest_after = TableDigests(stack.Dsn(), tenants);
  const int64_t exhausted_after =
      QueryInt(stack.Dsn(), "SELECT count(*) FROM events_ops.exhausted_events");
  int64_t changed = 0;
  for (const auto& [tenant, d] : digest_before) {
    if (digest_after.count(tenant) == 0 || digest_after.at(tenant) != d) ++changed;
  }
  report.extra = {{"same ids deduplicated by JetStream", std::to_string(deduplicated)},
                  {"tenants whose table content changed", std::to_string(changed)},
                  {"exhausted rows before/after",
                   std::to_string(exhausted_before) + "/" + std::to_string(exhausted_after)}};
  CheckProcesses(stack, report);
  report.Print();
  ExpectClean(report.tally);
  EXPECT_EQ(changed, 0) << "republishing the same bodies changed table content";
  EXPECT_EQ(digest_before.size(), digest_after.size());
  // Each republished bad event is a new event with its own exhausted row.
  EXPECT_EQ(exhausted_after, 2 * exhausted_before);
}

// ---------------------------------------------------------------------------------------------
// 9. Two replicas on one durable consumer; one is killed and stays dead.
TEST(Chaos, TwoReplicasShareTheConsumerAndSurviveLosingOne) {
  Announce("two_replicas_one_killed");
  ChaosStack stack(Options({{"ACK_WAIT", "2s"}}, false, /*processors=*/2));
  Ledger ledger;
  ledger.Add(Workload::Generate(Spec(TenantIds(20))));
  LoadPublisher pub(stack.Nats().Url(), ledger, 0, ledger.events.size(), Publishing());
  ASSERT_TRUE(stack.WaitProgress(Point(0.4), FaultDeadline()));
  const std::string applied = R"(evp_events_total{outcome="applied",type="messages.upsert"})";
  // Every messages.update of the load is newer than its row: one counted stale was lost.
  const std::string stale_updates =
      R"(evp_events_total{outcome="stale_skipped",type="messages.update"})";
  const double b_applied = Metric(stack.ProcessorPort(1), applied);
  const double b_stale_updates = Metric(stack.ProcessorPort(1), stale_updates);
  stack.KillProcessor(1);
  Report report("2 replicas, one kill -9", N());
  report.publish_s = pub.Join();
  report.tally = Settle(stack, ledger, SettleDeadline(), &report.drain_s);
  const double a_applied = Metric(stack.ProcessorPort(0), applied);
  const double a_stale_updates = Metric(stack.ProcessorPort(0), stale_updates);
  report.redeliveries = stack.Realtime().Redeliveries();
  report.peak_rss_mb = stack.PeakProcessorRssMb();
  report.extra = {{"messages.upsert applied by replica A / by B before its kill",
                   Fmt(a_applied, 0) + " / " + Fmt(b_applied, 0)},
                  {"messages.update counted stale by A / by B (must be 0)",
                   Fmt(a_stale_updates, 0) + " / " + Fmt(b_stale_updates, 0)}};
  CheckProcesses(stack, report);
  report.Print();
  ExpectClean(report.tally);
  EXPECT_GT(b_applied, 0) << "the second replica never got work: the consumer is not shared";
  // A stale update is lost unless redelivered (B's are when B dies before acking them).
  EXPECT_EQ(a_stale_updates + b_stale_updates, 0)
      << "messages.update classified stale although newer than its row: the update raced the "
         "upsert committed by the other replica (see docs/reliability.md, findings)";
  EXPECT_GT(a_applied, 0);
}

// ---------------------------------------------------------------------------------------------
// 10. Several writers on one tenant (two replicas, small batches): every messages.update that
// lands right behind its message is applied, never dropped as stale.
TEST(Chaos, ConcurrentReplicasNeverDropAnUpdate) {
  Announce("concurrent_writers_update_race");
  ChaosStack stack(Options({{"BATCH_SIZE", "16"}, {"BATCH_MAX_WAIT", "5ms"}}, false, 2));
  WorkloadSpec spec = Spec(TenantIds(3));
  spec.events = std::min<int64_t>(N(), 20'000);
  spec.update_pairs = true;
  Ledger ledger;
  ledger.Add(Workload::Generate(spec));
  LoadPublisher pub(stack.Nats().Url(), ledger, 0, ledger.events.size(), Publishing());
  Report report("2 replicas, updates right behind their messages", spec.events);
  report.publish_s = pub.Join();
  report.tally = Settle(stack, ledger, SettleDeadline(), &report.drain_s);
  const std::string stale_updates =
      R"(evp_events_total{outcome="stale_skipped",type="messages.update"})";
  const double stale =
      Metric(stack.ProcessorPort(0), stale_updates) + Metric(stack.ProcessorPort(1), stale_updates);
  report.redeliveries = stack.Realtime().Redeliveries();
  report.peak_rss_mb = stack.PeakProcessorRssMb();
  report.extra = {{"messages.update counted stale (must be 0)", Fmt(stale, 0)}};
  CheckProcesses(stack, report);
  report.Print();
  ExpectClean(report.tally);
  EXPECT_EQ(stale, 0) << "an update raced the upsert committed by the other replica";
}

}  // namespace
}  // namespace evp::chaos
