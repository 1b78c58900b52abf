#pragma once
// The chaos harness: the whole product on real servers (its own nats-server -js, PostgreSQL,
// events-processor replicas and the DLQ worker as child processes), a load publisher with
// unique Nats-Msg-Ids and retries, fault helpers, and the end-of-run accounting computed
// from PostgreSQL and JetStream (never from the processor's counters, which die with it):
//
//   lost = published - applied - superseded - exhausted = 0, duplicates = 0,
//   final tables == the state computed from what was published.
//
// Thread-safety: ChaosStack and LoadPublisher are driven from the test's main thread; their
// own background threads (RSS sampler, publisher workers) only touch internal state.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "chaos/workload.hpp"
#include "support/nats_client.hpp"
#include "support/servers.hpp"

namespace evp::chaos {

using Env = std::map<std::string, std::string>;
using std::chrono::milliseconds;
using std::chrono::seconds;

// CHAOS_* environment knobs, read once and printed by every scenario.
struct Settings {
  int64_t events = 100'000;    // CHAOS_EVENTS
  uint64_t seed = 20'240'611;  // CHAOS_SEED
  int publishers = 4;          // CHAOS_PUBLISHERS: publishing connections
  double rate = 1'000;         // CHAOS_RATE: offered events/s of the paced scenarios
  int outage_seconds = 30;     // CHAOS_PG_OUTAGE_SECONDS
  int tenants = 1'000;         // CHAOS_TENANTS: tenants of the many-tenants scenario
  std::string report_file;     // CHAOS_REPORT: markdown rows are appended here
  static const Settings& Get();
};

int64_t NowUnix();
int64_t NowUnixMicros();

// Consumer state from JetStream ($JS.API.CONSUMER.INFO).
struct ConsumerState {
  bool ok = false;
  uint64_t delivered_consumer_seq = 0;  // every delivery, redeliveries included
  uint64_t delivered_stream_seq = 0;    // last stream sequence delivered
  uint64_t ack_floor_stream_seq = 0;
  int64_t num_ack_pending = 0;
  int64_t num_redelivered = 0;
  uint64_t num_pending = 0;
  std::string error;
  // Deliveries beyond the first of each message, when every message has been delivered.
  uint64_t Redeliveries() const {
    return delivered_consumer_seq > delivered_stream_seq
               ? delivered_consumer_seq - delivered_stream_seq
               : 0;
  }
};

struct StackOptions {
  Env env;  // overrides of the chaos defaults, for every binary
  bool private_postgres = false;
  int processors = 1;
  bool worker = true;
};
inline StackOptions Options(Env env = {}, bool private_postgres = false, int processors = 1) {
  StackOptions o;
  o.env = std::move(env);
  o.private_postgres = private_postgres;
  o.processors = processors;
  return o;
}

class ChaosStack {
 public:
  explicit ChaosStack(const StackOptions& options = {});
  ~ChaosStack();
  ChaosStack(const ChaosStack&) = delete;
  ChaosStack& operator=(const ChaosStack&) = delete;

  // A database of this stack alone (tests of one process never see each other's rows).
  const std::string& Dsn() const { return env_.at("POSTGRES_DSN"); }
  const Env& BaseEnv() const { return env_; }
  testing::NatsServer& Nats() { return nats_; }
  testing::PostgresServer* PrivatePostgres() { return private_pg_.get(); }

  // Processor replica i (0-based). Start() after Kill/Terminate starts a new incarnation on
  // the same HTTP port.
  void StartProcessor(int i);
  void KillProcessor(int i);  // SIGKILL and reap
  // SIGTERM; returns the exit code (nullopt on timeout) and how long the exit took.
  std::optional<int> TerminateProcessor(int i, milliseconds timeout, double* took_seconds);
  bool ProcessorRunning(int i);
  bool ProcessorReady(int i) const;
  int ProcessorPort(int i) const { return processor_ports_.at(static_cast<size_t>(i)); }
  // Seconds until replica i answers /readyz 200, or -1 on timeout.
  double WaitProcessorReady(int i, milliseconds deadline = milliseconds(60'000)) const;

  void StartWorker();
  void KillWorker();
  bool WorkerReady() const;
  int WorkerPort() const { return worker_port_; }
  double WaitWorkerReady(milliseconds deadline = milliseconds(60'000)) const;

  // Binaries that exited although the test did not stop them (a crash, an abort), with their
  // exit code and last log line; empty when all is well.
  std::vector<std::string> UnexpectedExits();

  std::string ProcessorLogs() const;  // every incarnation of every replica, oldest first
  std::string WorkerLogs() const;

  ConsumerState Consumer(const std::string& stream, const std::string& consumer) const;
  ConsumerState Realtime() const;
  ConsumerState Dlq() const;
  // Realtime ack floor: every stream sequence up to it is settled (0 while unknown). Faults
  // keyed to it hit the processor at a given point of the work, however fast it runs.
  uint64_t Progress() const;
  // Waits until Progress() >= target.
  bool WaitProgress(uint64_t target, milliseconds deadline) const;

  double PeakProcessorRssMb() const {
    return static_cast<double>(peak_processor_kb_.load()) / 1024.0;
  }
  double PeakWorkerRssMb() const { return static_cast<double>(peak_worker_kb_.load()) / 1024.0; }

 private:
  Env ProcessEnv(int port) const;
  void TrackPids();
  void SampleLoop();

  std::unique_ptr<testing::PostgresServer> private_pg_;
  std::string own_database_;  // on the shared server: created here, dropped at the end
  testing::NatsServer nats_;
  Env env_;
  std::vector<int> processor_ports_;
  std::vector<std::unique_ptr<testing::ChildProcess>> processors_;
  std::vector<bool> processor_stopped_;  // stopped on purpose by the test
  bool worker_stopped_ = false;
  int worker_port_ = 0;
  std::unique_ptr<testing::ChildProcess> worker_;
  std::vector<std::unique_ptr<testing::ChildProcess>> retired_processors_;
  std::vector<std::unique_ptr<testing::ChildProcess>> retired_workers_;
  std::unique_ptr<testing::TestPublisher> monitor_;
  mutable std::mutex monitor_mu_;

  std::mutex pids_mu_;
  std::vector<pid_t> processor_pids_;
  pid_t worker_pid_ = -1;
  std::atomic<int64_t> peak_processor_kb_{0};
  std::atomic<int64_t> peak_worker_kb_{0};
  std::atomic<bool> sampling_{true};
  std::thread sampler_;
};

// HTTP GET on 127.0.0.1:port; body, status -1 when unreachable.
std::string HttpGet(int port, const std::string& path, int* status = nullptr);
// Value of one exact series ("name{labels}") of a /metrics page; 0 when absent.
double Metric(int port, const std::string& series);
// Sum of the series of metric `name` whose labels contain `label` (e.g. reason="x").
double MetricSum(int port, const std::string& name, const std::string& label);

// Publishes a range of the ledger's events from several connections in parallel (events that
// share an order key go through the same connection, in order), retrying failed publishes
// with the same Nats-Msg-Id (so a retry is deduplicated, never doubled) until it gets a
// PubAck or the retry deadline passes.
class LoadPublisher {
 public:
  struct Options {
    int threads = 4;
    double rate = 0;  // events/s in total; 0 = as fast as PubAcks come back
    milliseconds retry_deadline{300'000};
    // Called from a publisher thread after each PubAck.
    std::function<void(size_t index)> on_acked;
  };
  LoadPublisher(std::string url, Ledger& ledger, size_t first, size_t count, Options options);
  ~LoadPublisher();
  LoadPublisher(const LoadPublisher&) = delete;
  LoadPublisher& operator=(const LoadPublisher&) = delete;

  int64_t Acked() const { return acked_.load(); }
  int64_t Retries() const { return retries_.load(); }
  bool Finished() const { return finished_.load() == static_cast<int>(threads_.size()); }
  // Waits for every thread; returns the publishing time in seconds.
  double Join();
  bool WaitAcked(int64_t n, milliseconds deadline) const;

 private:
  void Run(int thread, std::vector<size_t> plan);

  std::string url_;
  Ledger& ledger_;
  Options options_;
  std::chrono::steady_clock::time_point started_;
  std::atomic<int64_t> acked_{0};
  std::atomic<int64_t> retries_{0};
  std::atomic<int> finished_{0};
  std::vector<std::thread> threads_;
  double seconds_ = 0;
};

// The end-of-run accounting (see the file comment).
struct Tally {
  int64_t published = 0;   // events with a PubAck (not counting deduplicated re-sends)
  int64_t applied = 0;     // effect present exactly as published
  int64_t superseded = 0;  // a newer version of the row won (stale-skipped or overwritten)
  int64_t exhausted = 0;   // events with an exhausted row
  int64_t lost = 0;
  int64_t duplicates = 0;            // extra exhausted rows of one event, or applied and exhausted
  int64_t unexpected_exhausted = 0;  // events expected applied that were exhausted
  int64_t wrong_reason = 0;
  int64_t wrong_payload = 0;    // original_payload differs from the published bytes
  int64_t wrong_source = 0;     // source_subject or company_id differs
  int64_t stray_exhausted = 0;  // exhausted rows matching no published event
  int64_t unexpected_rows = 0;  // tenant rows no published valid event explains
  int64_t state_mismatch = 0;   // final rows differing from the expected state
  int64_t schema_mismatch = 0;  // tenant registry / schemas differing from the expected
  std::map<std::string, int64_t> exhausted_by_reason;
  std::map<int64_t, int64_t> exhausted_attempts;  // attempts -> rows
  // (ledger index, row created_at - publish time in us) of every applied messages.upsert,
  // when VerifyOptions::collect_latency. created_at is the writing transaction's start, so
  // this slightly underestimates publish -> visible; VisibilityProbe measures that exactly.
  std::vector<std::pair<size_t, int64_t>> upsert_latency_us;
  std::vector<std::string> problems;  // the first examples of every kind of failure

  bool Clean() const {
    return lost == 0 && duplicates == 0 && unexpected_exhausted == 0 && wrong_reason == 0 &&
           wrong_payload == 0 && wrong_source == 0 && stray_exhausted == 0 &&
           unexpected_rows == 0 && state_mismatch == 0 && schema_mismatch == 0;
  }
  std::string ExhaustedSummary() const;
};

struct VerifyOptions {
  bool collect_latency = false;
};
Tally Verify(const std::string& dsn, const Ledger& ledger, const VerifyOptions& options = {});

// Waits until the realtime and DLQ consumers have nothing pending or unacknowledged and the
// database accounts for every published event (lost == 0), or until a loss stays while
// nothing is in flight any more (it is final), or the deadline passes; returns the last
// accounting and the time it took.
Tally Settle(const ChaosStack& stack, const Ledger& ledger, milliseconds deadline,
             double* took_seconds, const VerifyOptions& options = {});

// Measures publish -> row visible for a sample of messages.upsert events: Add() (from the
// publisher's on_acked callback) registers an event, a thread polls PostgreSQL every 20 ms for
// the rows not seen yet.
class VisibilityProbe {
 public:
  VisibilityProbe(std::string dsn, const Ledger& ledger);
  ~VisibilityProbe();
  VisibilityProbe(const VisibilityProbe&) = delete;
  VisibilityProbe& operator=(const VisibilityProbe&) = delete;

  void Add(size_t index);  // thread-safe
  size_t Outstanding();
  // (ledger index, publish -> visible in us) of every sampled event seen so far.
  std::vector<std::pair<size_t, int64_t>> Results();

 private:
  void Loop();

  std::string dsn_;
  const Ledger& ledger_;
  std::mutex mu_;
  std::map<int, std::vector<size_t>> outstanding_;  // tenant -> ledger indexes
  std::vector<std::pair<size_t, int64_t>> results_;
  std::atomic<bool> running_{true};
  std::thread thread_;
};

// md5 of every tenant table's content columns (bookkeeping columns excluded), per tenant.
std::map<std::string, std::string> TableDigests(const std::string& dsn,
                                                const std::vector<std::string>& tenants);

// Percentile (0..100) of microsecond samples, in milliseconds; -1 when empty.
double PercentileMs(std::vector<int64_t> samples, double pct);

struct Report {
  Report(std::string name, int64_t n) : scenario(std::move(name)), events(n) {}
  std::string scenario;
  int64_t events = 0;
  Tally tally;
  uint64_t redeliveries = 0;
  double recovery_s = -1;  // fault end -> ready again (max over faults); -1 = no fault
  double publish_s = 0;
  double drain_s = 0;  // publishing done -> everything accounted
  double peak_rss_mb = 0;
  std::vector<std::pair<std::string, std::string>> extra;  // scenario-specific lines
  // Prints the table, and appends a markdown row to CHAOS_REPORT when set.
  void Print() const;
};

// Prints settings and the seed; call first in every scenario.
void Announce(const std::string& scenario);

// "chaos_t0001" ... deterministic tenant ids.
std::vector<std::string> TenantIds(int n, const std::string& prefix = "chaos_t");

}  // namespace evp::chaos
