// Heartbeats: in-progress acks for the batches a consumer loop holds, from one thread.
#include "pipeline/heartbeats.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

namespace evp::pipeline {
namespace {

using std::chrono::milliseconds;

// Counts the in-progress acks per batch, and the threads that sent them.
class BeatCounter final : public EventSource {
 public:
  Result<FetchedBatch, std::string> Fetch(int, milliseconds) override { return FetchedBatch{}; }
  void Settle(uint64_t, std::span<const Decision>) override {}
  void InProgress(uint64_t token) override {
    std::lock_guard lock(mu_);
    ++beats_[token];
    threads_.insert(std::this_thread::get_id());
    cv_.notify_all();
  }
  bool Connected() override { return true; }
  bool Lag(uint64_t*, uint64_t*) override { return false; }

  int BeatsOf(uint64_t token) {
    std::lock_guard lock(mu_);
    return beats_[token];
  }
  size_t Threads() {
    std::lock_guard lock(mu_);
    return threads_.size();
  }
  // Blocks until batch `token` got at least `n` in-progress acks, or 10 s passed.
  bool WaitFor(uint64_t token, int n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return beats_[token] >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, int> beats_;
  std::set<std::thread::id> threads_;
};

TEST(Heartbeats, EveryHeldBatchGetsInProgressAcksFromOneThread) {
  BeatCounter source;
  Heartbeats heartbeats(source, milliseconds(2));
  auto a = heartbeats.Start(1);
  auto b = heartbeats.Start(2);
  auto c = heartbeats.Start(3);
  EXPECT_TRUE(source.WaitFor(1, 3));
  EXPECT_TRUE(source.WaitFor(2, 3));
  EXPECT_TRUE(source.WaitFor(3, 3));
  EXPECT_EQ(source.Threads(), 1U);
}

TEST(Heartbeats, ABatchLetGoGetsNoMoreInProgressAcks) {
  BeatCounter source;
  Heartbeats heartbeats(source, milliseconds(1));
  auto kept = heartbeats.Start(7);
  auto released = heartbeats.Start(8);
  ASSERT_TRUE(source.WaitFor(8, 2));
  released.reset();
  const int at_release = source.BeatsOf(8);
  // The batch still held gets several more in the meantime: the thread kept running.
  ASSERT_TRUE(source.WaitFor(7, source.BeatsOf(7) + 5));
  EXPECT_EQ(source.BeatsOf(8), at_release);
}

TEST(Heartbeats, ABatchLetGoWhileTheThreadWaitsForItsAckLeavesTheOthersServed) {
  // The thread waits for the earliest due ack; the batch it waits for may be let go
  // meanwhile (the ASan build caught a read of the freed deadline).
  BeatCounter source;
  Heartbeats heartbeats(source, milliseconds(20));
  for (uint64_t i = 0; i < 20; ++i) {
    auto first = heartbeats.Start(100 + i);
    std::this_thread::yield();
    first.reset();
    auto second = heartbeats.Start(200 + i);
    EXPECT_TRUE(source.WaitFor(200 + i, 1));
  }
}

TEST(Heartbeats, WithAnIntervalOfZeroNothingIsSent) {
  BeatCounter source;
  Heartbeats heartbeats(source, milliseconds(0));
  EXPECT_EQ(heartbeats.Start(1), nullptr);
  EXPECT_EQ(source.Threads(), 0U);
}

}  // namespace
}  // namespace evp::pipeline
