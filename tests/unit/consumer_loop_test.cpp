// RunConsumerLoop against a scripted source: when the consumer it reads from disappears, the
// loop asks the source to recreate it, whether fetches fail or just come back empty.
#include "pipeline/consumer_loop.hpp"

#include <gtest/gtest.h>

#include <thread>

#include "fakes.hpp"

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
  std::thread loop([&] {
    RunConsumerLoop(source, handler, store, metrics,
                    {"test", 10, milliseconds(1), milliseconds(0), milliseconds(1000)}, stop,
                    health);
  });
  const auto down_from = std::chrono::steady_clock::now();
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

}  // namespace
}  // namespace evp::pipeline
