// RunConsumerLoop against a scripted source: when the consumer it reads from disappears, the
// loop asks the source to recreate it, whether fetches fail or just come back empty.
#include "pipeline/consumer_loop.hpp"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "fakes.hpp"
#include "validation/schema_registry.hpp"

namespace evp::pipeline {
namespace {

using std::chrono::milliseconds;

// A source whose consumer is "deleted" until Recover() is called.
class DeletableSource final : public EventSource {
 public:
  explicit DeletableSource(bool fetch_fails) : fetch_fails_(fetch_fails) {}
  Result<FetchedBatch, std::string> Fetch(int, milliseconds) override {
    ++fetches;
    if (deleted && fetch_fails_) return Err{std::string("Consumer Deleted")};
    return FetchedBatch{};
  }
  void Settle(uint64_t, std::span<const Decision>) override {}
  void InProgress(uint64_t) override {}
  bool Connected() override { return connected; }
  bool Lag(uint64_t* pending, uint64_t* ack_pending) override {
    if (deleted) return false;
    *pending = 0;
    *ack_pending = 0;
    return true;
  }
  bool Recover() override {
    ++recoveries;
    deleted = false;
    return true;
  }

  std::atomic<bool> deleted{true};
  std::atomic<bool> connected{true};
  std::atomic<int> fetches{0};
  std::atomic<int> recoveries{0};

 private:
  bool fetch_fails_;
};

class NoopHandler final : public BatchHandler {
 public:
  std::vector<Decision> Process(std::span<const InboundMessage> batch) override {
    return std::vector<Decision>(batch.size(), Decision::Ack());
  }
  bool StoreUnavailable() const override { return false; }
};

// Runs the loop until `done` holds or 10 s pass, then stops it.
template <typename Pred>
bool RunUntil(EventSource& source, milliseconds lag_interval, Pred done) {
  testing::InMemoryEventStore store;
  observability::Metrics metrics("test");
  NoopHandler handler;
  std::atomic<bool> stop{false};
  LoopHealth health;
  std::thread loop([&] {
    RunConsumerLoop(source, handler, store, metrics,
                    {"test", 10, milliseconds(1), milliseconds(0), lag_interval}, stop, health);
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(5));  // poll period
  }
  const bool ok = done();
  stop = true;
  loop.join();
  return ok;
}

TEST(ConsumerLoop, FailingFetchOfADeletedConsumerRecreatesIt) {
  DeletableSource source(true);
  // Lag checks far apart: only the failing fetch can trigger the recovery here.
  EXPECT_TRUE(RunUntil(source, milliseconds(60'000), [&] { return source.recoveries > 0; }));
  EXPECT_FALSE(source.deleted);
}

TEST(ConsumerLoop, IdleLoopNoticesADeletedConsumerThroughItsLagCheck) {
  DeletableSource source(false);  // fetches just come back empty
  EXPECT_TRUE(RunUntil(source, milliseconds(20), [&] { return source.recoveries > 0; }));
  EXPECT_FALSE(source.deleted);
}

TEST(ConsumerLoop, NoRecoveryWhileDisconnected) {
  DeletableSource source(false);
  source.connected = false;
  EXPECT_TRUE(RunUntil(source, milliseconds(20), [&] { return source.fetches > 20; }));
  EXPECT_EQ(source.recoveries, 0);
}

// A source whose last pull request delivers after its fetch returned (seen at shutdown).
class LateDeliverySource final : public EventSource {
 public:
  Result<FetchedBatch, std::string> Fetch(int, milliseconds) override {
    ++fetches;
    return FetchedBatch{};
  }
  void Settle(uint64_t token, std::span<const Decision> decisions) override {
    settled_token = token;
    settled.assign(decisions.begin(), decisions.end());
  }
  void InProgress(uint64_t) override {}
  bool Connected() override { return true; }
  bool Lag(uint64_t*, uint64_t*) override { return false; }
  FetchedBatch FetchLate() override {
    FetchedBatch late;
    late.token = 42;
    late.messages.resize(3);
    return late;
  }

  std::atomic<int> fetches{0};
  uint64_t settled_token = 0;
  std::vector<Decision> settled;
};

TEST(ConsumerLoop, MessagesDeliveredAfterTheLastFetchAreProcessedAtShutdown) {
  LateDeliverySource source;
  // Lag checks far apart; the loop stops once it has fetched a few times.
  EXPECT_TRUE(RunUntil(source, milliseconds(60'000), [&] { return source.fetches >= 3; }));
  EXPECT_EQ(source.settled_token, 42u);
  ASSERT_EQ(source.settled.size(), 3u);
  for (const Decision& d : source.settled) EXPECT_EQ(d.kind, Decision::Kind::kAck);
}

// A source whose backlog keeps growing (publishers go on during a database outage).
class GrowingBacklogSource final : public EventSource {
 public:
  Result<FetchedBatch, std::string> Fetch(int, milliseconds) override {
    ++fetches;
    return FetchedBatch{};
  }
  void Settle(uint64_t, std::span<const Decision>) override {}
  void InProgress(uint64_t) override {}
  bool Connected() override { return true; }
  bool Lag(uint64_t* pending, uint64_t* ack_pending) override {
    *pending = static_cast<uint64_t>(++lag_checks) * 100;
    *ack_pending = 3;
    return true;
  }

  std::atomic<int> fetches{0};
  std::atomic<int> lag_checks{0};
};

TEST(ConsumerLoop, LagGaugesKeepMovingWhileTheDatabaseIsDown) {
  GrowingBacklogSource source;
  testing::InMemoryEventStore store;
  store.fail_transiently = true;
  observability::Metrics metrics("test");
  NoopHandler handler;
  std::atomic<bool> stop{false};
  LoopHealth health;
  health.store_ok = false;  // as after a batch that found the database gone
  std::thread loop([&] {
    RunConsumerLoop(source, handler, store, metrics,
                    {"test", 10, milliseconds(1), milliseconds(0), milliseconds(1)}, stop, health);
  });
  auto& pending = metrics.ConsumerPending("test");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (pending.Value() < 200 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(5));  // poll period
  }
  stop = true;
  loop.join();
  EXPECT_GE(pending.Value(), 200) << "the gauge followed the growing backlog";
  EXPECT_EQ(metrics.ConsumerAckPending("test").Value(), 3);
  EXPECT_EQ(source.fetches, 0) << "nothing fetched while the database is down";
}

class OutageRecordingHandler final : public BatchHandler {
 public:
  std::vector<Decision> Process(std::span<const InboundMessage> batch) override {
    return std::vector<Decision>(batch.size(), Decision::Ack());
  }
  bool StoreUnavailable() const override { return false; }
  void DatabaseWasUnavailable(milliseconds outage) override {
    outage_ms = outage.count();
    ++outages;
  }
  std::atomic<int64_t> outage_ms{0};
  std::atomic<int> outages{0};
};

TEST(ConsumerLoop, TellsTheHandlerHowLongItWaitedForTheDatabase) {
  DeletableSource source(false);
  source.deleted = false;
  testing::InMemoryEventStore store;
  store.fail_transiently = true;
  observability::Metrics metrics("test");
  OutageRecordingHandler handler;
  std::atomic<bool> stop{false};
  LoopHealth health;
  health.store_ok = false;  // as after a batch that found the database gone
  // Taken before the loop starts, which is when the loop's own measure can begin at the
  // earliest: the reported outage can then never exceed down_for.
  const auto down_from = std::chrono::steady_clock::now();
  std::thread loop([&] {
    RunConsumerLoop(source, handler, store, metrics,
                    {"test", 10, milliseconds(1), milliseconds(0), milliseconds(1000)}, stop,
                    health);
  });
  std::this_thread::sleep_for(milliseconds(700));  // the outage being measured
  store.fail_transiently = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (handler.outages.load() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(5));  // poll period
  }
  const auto down_for =
      std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - down_from);
  stop = true;
  loop.join();
  ASSERT_EQ(handler.outages.load(), 1);
  EXPECT_GE(handler.outage_ms.load(), 600);
  EXPECT_LE(handler.outage_ms.load(), down_for.count());
}

// A backlog of `batches` full batches of chats.upsert events, then nothing. Thread-safe: with
// fetch-ahead, Fetch runs alongside Settle. `WaitForFetch(n, patience)` blocks until the
// n-th Fetch has started or patience ran out.
class BacklogSource final : public EventSource {
 public:
  BacklogSource(int batches, int batch_size) : batches_(batches), batch_size_(batch_size) {}

  Result<FetchedBatch, std::string> Fetch(int max, milliseconds) override {
    if (recovering_) ++overlaps;
    std::unique_lock lock(mu_);
    ++fetches_;
    cv_.notify_all();
    FetchedBatch batch;
    if (handed_out_ == batches_) return batch;
    batch.token = static_cast<uint64_t>(++handed_out_);
    for (int i = 0; i < std::min(max, batch_size_); ++i) {
      InboundMessage m;
      m.subject = "v1.chats.upsert.t1";
      m.stream = "EVENTS_REALTIME";
      m.stream_seq = ++seq_;
      m.data = R"({"chat_id":"c)" + std::to_string(m.stream_seq) +
               R"(","jid":"j","phone_number":"+1","conversation_timestamp":1699999000})";
      m.delivered = 1;
      batch.messages.push_back(std::move(m));
    }
    if (handed_out_ == batches_ && stop_after_last_ != nullptr) *stop_after_last_ = true;
    return batch;
  }
  void Settle(uint64_t token, std::span<const Decision> decisions) override {
    if (recovering_) ++overlaps;
    std::lock_guard lock(mu_);
    for (const Decision& d : decisions) acks_of_[token] += d.kind == Decision::Kind::kAck ? 1 : 0;
    settled_[token] += static_cast<int>(decisions.size());
    for (const Decision& d : decisions) acked_ += d.kind == Decision::Kind::kAck ? 1 : 0;
  }
  void InProgress(uint64_t token) override {
    std::lock_guard lock(mu_);
    in_progress_.insert(token);
    cv_.notify_all();
  }
  bool Connected() override { return true; }
  bool Lag(uint64_t* pending, uint64_t* ack_pending) override {
    *pending = 0;
    *ack_pending = 0;
    return !lag_fails;  // failing while connected: the loop recovers the consumer
  }
  // Recovery replaces the subscription: a fetch or an ack meanwhile would use a freed one.
  bool Recover() override {
    recovering_ = true;
    std::this_thread::sleep_for(milliseconds(2));  // the work of re-creating the consumer
    recovering_ = false;
    ++recoveries;
    return true;
  }

  // Acknowledged messages of batch `token` (settled so far).
  int AcksOf(uint64_t token) {
    std::lock_guard lock(mu_);
    return acks_of_[token];
  }
  // Blocks until batch `token` got an in-progress ack or patience ran out.
  bool WaitForInProgress(uint64_t token, milliseconds patience) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, patience, [&] { return in_progress_.count(token) > 0; });
  }
  bool WaitForFetch(int n, milliseconds patience) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, patience, [&] { return fetches_ >= n; });
  }
  // Every batch handed out was settled once, whole and acknowledged.
  bool AllSettled() {
    std::lock_guard lock(mu_);
    if (static_cast<int>(settled_.size()) != handed_out_) return false;
    for (const auto& [token, count] : settled_) {
      if (count != batch_size_) return false;
    }
    return acked_ == handed_out_ * batch_size_;
  }
  int HandedOut() {
    std::lock_guard lock(mu_);
    return handed_out_;
  }
  void StopAfterLast(std::atomic<bool>* stop) { stop_after_last_ = stop; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int batches_;
  int batch_size_;
  int fetches_ = 0;
  int handed_out_ = 0;
  uint64_t seq_ = 0;
  int acked_ = 0;
  std::map<uint64_t, int> settled_;
  std::set<uint64_t> in_progress_;
  std::map<uint64_t, int> acks_of_;
  std::atomic<bool>* stop_after_last_ = nullptr;
  std::atomic<bool> recovering_{false};

 public:
  std::atomic<bool> lag_fails{false};
  std::atomic<int> overlaps{0};  // fetches and acks during a recovery
  std::atomic<int> recoveries{0};
};

// Writes nothing until the source has seen a given number of fetches: the write of batch k
// waits for the fetch after the next one (k + 2), which only a loop that pulls ahead has
// started by then. The last batch's write does not wait: nothing comes after it.
class WaitForFetchStore final : public EventStore {
 public:
  WaitForFetchStore(BacklogSource& source, int batches, milliseconds patience)
      : source_(source), batches_(batches), patience_(patience) {}
  // Instead: the write of batch k waits until batch k + 2, pulled ahead, is kept alive with
  // in-progress acks.
  void WaitForHeartbeatInstead() { heartbeat_ = true; }
  Result<Unit, StoreError> EnsureTenant(const std::string& company_id) override {
    return inner_.EnsureTenant(company_id);
  }
  Result<std::vector<ApplyResult>, StoreError> Apply(
      std::vector<handlers::Mutation> mutations) override {
    ++writes_;
    const bool ok =
        writes_ >= batches_ - (heartbeat_ ? 1 : 0) ||
        (heartbeat_ ? source_.WaitForInProgress(static_cast<uint64_t>(writes_) + 2, patience_)
                    : source_.WaitForFetch(writes_ + 2, patience_));
    if (!ok) ++timeouts;
    return inner_.Apply(std::move(mutations));
  }
  bool Ping() override { return true; }

  std::atomic<int> timeouts{0};

 private:
  BacklogSource& source_;
  int batches_;
  milliseconds patience_;
  bool heartbeat_ = false;
  testing::InMemoryEventStore inner_;
  int writes_ = 0;
};

// Fails every write while `down` (the database is unreachable); Ping tells.
class OutageStore final : public EventStore {
 public:
  Result<Unit, StoreError> EnsureTenant(const std::string& company_id) override {
    return inner_.EnsureTenant(company_id);
  }
  Result<std::vector<ApplyResult>, StoreError> Apply(
      std::vector<handlers::Mutation> mutations) override {
    if (down) {
      ++writes_while_down;
      return Err{StoreError{StoreErrorKind::kTransient, "08006: connection failure"}};
    }
    return inner_.Apply(std::move(mutations));
  }
  bool Ping() override {
    if (down) ++pings_while_down;
    return !down;
  }

  std::atomic<bool> down{true};
  std::atomic<int> writes_while_down{0};
  std::atomic<int> pings_while_down{0};

 private:
  testing::InMemoryEventStore inner_;
};

class PipelinedLoop : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { spdlog::set_level(spdlog::level::off); }
  static void TearDownTestSuite() { spdlog::set_level(spdlog::level::info); }

  // Runs RunPipelinedLoop over `source` until every batch is settled (or 10 s pass), unless
  // the source stops it itself.
  void Run(BacklogSource& source, EventStore& store, bool fetch_ahead, int batches,
           milliseconds heartbeat = milliseconds(0)) {
    Run(source, store, fetch_ahead, heartbeat, milliseconds(60'000),
        [&] { return source.HandedOut() == batches && source.AllSettled(); });
  }
  // The same until `done` holds (or 10 s pass), with lag checks every `lag_interval`.
  template <typename Pred>
  void Run(BacklogSource& source, EventStore& store, bool fetch_ahead, milliseconds heartbeat,
           milliseconds lag_interval, Pred done) {
    auto schemas = validation::SchemaRegistry::LoadEmbedded();
    ASSERT_TRUE(schemas.ok()) << schemas.error();
    auto cfg = Config::FromEnvironment(Binary::kProcessor, [](const std::string& k) {
      return k == "POSTGRES_DSN" ? std::optional<std::string>("postgresql://t@localhost/t")
                                 : std::nullopt;
    });
    ASSERT_TRUE(cfg.ok());
    observability::Metrics& metrics = metrics_;
    testing::RecordingDeadLetterSink sink;
    testing::InMemoryExhaustedStore exhausted;
    testing::FakeClock clock;
    BatchProcessor processor(cfg.value(), schemas.value(), store, sink, exhausted, clock, metrics);
    LoopHealth health;
    LoopOptions options{"test", kBatch, milliseconds(1), heartbeat, lag_interval};
    options.fetch_ahead = fetch_ahead;
    std::thread loop(
        [&] { RunPipelinedLoop(source, processor, store, metrics, options, stop_, health); });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!stop_ && std::chrono::steady_clock::now() < deadline && !done()) {
      std::this_thread::sleep_for(milliseconds(5));  // poll period
    }
    stop_ = true;
    loop.join();
    EXPECT_EQ(sink.publish_calls, 0) << "the events are valid: all must be written";
  }

  static constexpr int kBatch = 8;
  std::atomic<bool> stop_{false};
  observability::Metrics metrics_{"test"};
};

// Takes `delay` for every write: the database's share of a batch.
class SlowStore final : public EventStore {
 public:
  explicit SlowStore(milliseconds delay) : delay_(delay) {}
  Result<Unit, StoreError> EnsureTenant(const std::string& company_id) override {
    return inner_.EnsureTenant(company_id);
  }
  Result<std::vector<ApplyResult>, StoreError> Apply(
      std::vector<handlers::Mutation> mutations) override {
    std::this_thread::sleep_for(delay_);  // the write itself, not a wait for another thread
    return inner_.Apply(std::move(mutations));
  }
  bool Ping() override { return true; }

 private:
  milliseconds delay_;
  testing::InMemoryEventStore inner_;
};

TEST_F(PipelinedLoop, UnderBacklogTheNextBatchIsPulledWhileTheCurrentOneIsWritten) {
  BacklogSource source(6, kBatch);
  WaitForFetchStore store(source, 6, milliseconds(5000));
  Run(source, store, true, 6);
  EXPECT_EQ(store.timeouts.load(), 0) << "a write waited in vain for the fetch after next";
  EXPECT_EQ(source.HandedOut(), 6);
  EXPECT_TRUE(source.AllSettled());
}

TEST_F(PipelinedLoop, EachBatchIsTimedOnceInEachStage) {
  // An SRE reads from evp_batch_stage_seconds whether the processor (prepare), the database
  // (write) or NATS (settle) holds batches up: the database's time must land in write.
  constexpr int kBatches = 4;
  constexpr milliseconds kWrite{100};
  BacklogSource source(kBatches, kBatch);
  SlowStore store(kWrite);
  Run(source, store, true, kBatches);
  ASSERT_TRUE(source.AllSettled());
  auto stage = [&](observability::BatchStage s) {
    return metrics_.batch_stage(s).Collect().histogram;
  };
  const auto prepare = stage(observability::BatchStage::kPrepare);
  const auto write = stage(observability::BatchStage::kWrite);
  const auto settle = stage(observability::BatchStage::kSettle);
  EXPECT_EQ(prepare.sample_count, static_cast<uint64_t>(kBatches));
  EXPECT_EQ(write.sample_count, static_cast<uint64_t>(kBatches));
  EXPECT_EQ(settle.sample_count, static_cast<uint64_t>(kBatches));
  const double one_write = std::chrono::duration<double>(kWrite).count();
  EXPECT_GE(write.sample_sum, kBatches * one_write);
  // Per batch, preparing 8 events and settling them take far less than half a write, also
  // for the batches that waited for the write before them.
  EXPECT_LT(prepare.sample_sum / kBatches, one_write / 2)
      << "the store's time (or the wait for it) was counted as prepare";
  EXPECT_LT(settle.sample_sum / kBatches, one_write / 2)
      << "the store's time (or the wait for it) was counted as settle";
}

TEST_F(PipelinedLoop, WithoutFetchAheadTheNextFetchWaitsForTheWrite) {
  // The same store with the option off: the gate can only time out, which shows that the
  // test above measures the option and not the timing of its threads.
  BacklogSource source(2, kBatch);
  WaitForFetchStore store(source, 2, milliseconds(500));
  Run(source, store, false, 2);
  EXPECT_GE(store.timeouts.load(), 1);
  EXPECT_TRUE(source.AllSettled());
}

TEST_F(PipelinedLoop, ABatchPulledAheadGetsInProgressAcksWhileItWaits) {
  // Batches pulled ahead can wait longer than ACK_WAIT (the batch before them may create
  // many tenant schemas): without in-progress acks the server would deliver them again.
  BacklogSource source(5, kBatch);
  WaitForFetchStore store(source, 5, milliseconds(5000));
  store.WaitForHeartbeatInstead();
  Run(source, store, true, 5, milliseconds(10));
  EXPECT_EQ(store.timeouts.load(), 0) << "a batch pulled ahead got no in-progress ack";
  EXPECT_TRUE(source.AllSettled());
}

TEST_F(PipelinedLoop, RecoveringTheConsumerNeverRunsAlongsideAFetchOrAnAck) {
  BacklogSource source(30, kBatch);
  source.lag_fails = true;  // every lag check recovers the consumer
  testing::InMemoryEventStore store;
  Run(source, store, true, milliseconds(0), milliseconds(0),
      [&] { return source.HandedOut() == 30 && source.AllSettled(); });
  EXPECT_GT(source.recoveries.load(), 0);
  EXPECT_EQ(source.overlaps.load(), 0);
  EXPECT_TRUE(source.AllSettled());
}

TEST_F(PipelinedLoop, AnOutageHoldsTheBatchPulledAheadUntilTheDatabaseIsBack) {
  BacklogSource source(6, kBatch);
  OutageStore store;
  // Batch 1 meets the outage, and batch 2 was prepared meanwhile: both are written once
  // and handed back. Batch 3, pulled ahead, waits with the loop until the database answers.
  bool paused_after_two = false;
  Run(source, store, true, milliseconds(0), milliseconds(60'000), [&] {
    if (store.down && store.pings_while_down >= 3) {  // the loop waits for the database
      paused_after_two = store.writes_while_down == 2;
      store.down = false;
    }
    return source.HandedOut() == 6 && source.AcksOf(6) == kBatch;
  });
  EXPECT_TRUE(paused_after_two) << store.writes_while_down << " writes during the outage";
  EXPECT_EQ(source.AcksOf(1), 0);
  EXPECT_EQ(source.AcksOf(2), 0);
  for (uint64_t token = 3; token <= 6; ++token) {
    EXPECT_EQ(source.AcksOf(token), kBatch) << "batch " << token;
  }
}

TEST_F(PipelinedLoop, ABatchPulledAheadWhenStoppingIsStillWrittenAndSettled) {
  BacklogSource source(5, kBatch);
  source.StopAfterLast(&stop_);  // stop arrives while the last batch is pulled ahead
  testing::InMemoryEventStore store;
  Run(source, store, true, 5);
  EXPECT_EQ(source.HandedOut(), 5);
  EXPECT_TRUE(source.AllSettled()) << "a batch fetched before the stop was dropped";
}

}  // namespace
}  // namespace evp::pipeline
