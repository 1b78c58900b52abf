#include "pipeline/consumer_loop.hpp"

#include <condition_variable>
#include <mutex>
#include <thread>

#include "observability/logging.hpp"

namespace evp::pipeline {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

void SleepUnlessStopped(milliseconds d, const std::atomic<bool>& stop) {
  const auto until = steady_clock::now() + d;
  while (!stop.load() && steady_clock::now() < until) {
    std::this_thread::sleep_for(std::min<milliseconds>(
        milliseconds(50),
        std::chrono::duration_cast<milliseconds>(until - steady_clock::now()) + milliseconds(1)));
  }
}

namespace {

// Sends in-progress acks for the current batch until destroyed.
class Heartbeat {
 public:
  Heartbeat(EventSource& source, milliseconds interval) : source_(source) {
    if (interval.count() <= 0) return;
    thread_ = std::thread([this, interval] {
      std::unique_lock lock(mu_);
      while (!cv_.wait_for(lock, interval, [this] { return done_; })) source_.InProgress();
    });
  }
  ~Heartbeat() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  EventSource& source_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace

void RunConsumerLoop(EventSource& source, BatchHandler& processor, EventStore& store,
                     observability::Metrics& metrics, const LoopOptions& options,
                     const std::atomic<bool>& stop, LoopHealth& health) {
  health.running = true;
  auto next_lag = steady_clock::now();
  auto& pending_gauge = metrics.ConsumerPending(options.name);
  auto& ack_pending_gauge = metrics.ConsumerAckPending(options.name);
  while (!stop.load()) {
    if (!health.store_ok.load()) {
      // Backpressure: fetch nothing until the database answers.
      if (store.Ping()) {
        health.store_ok = true;
        observability::LogInfo("database reachable again; resuming", {{"consumer", options.name}});
      } else {
        SleepUnlessStopped(milliseconds(500), stop);
        continue;
      }
    }
    if (steady_clock::now() >= next_lag) {
      uint64_t pending = 0;
      uint64_t ack_pending = 0;
      if (source.Lag(&pending, &ack_pending)) {
        pending_gauge.Set(static_cast<double>(pending));
        ack_pending_gauge.Set(static_cast<double>(ack_pending));
      }
      next_lag = steady_clock::now() + options.lag_interval;
    }
    auto fetched = source.Fetch(options.batch_size, options.max_wait);
    if (!fetched.ok()) {
      health.source_ok = false;
      observability::LogWarn("fetch failed",
                             {{"consumer", options.name}, {"error", fetched.error()}});
      SleepUnlessStopped(milliseconds(500), stop);
      continue;
    }
    health.source_ok = true;
    if (fetched->empty()) continue;
    const auto started = steady_clock::now();
    std::vector<Decision> decisions;
    {
      Heartbeat heartbeat(source, options.heartbeat);
      decisions = processor.Process(fetched.value());
    }
    source.Settle(decisions);
    metrics.batch_size().Observe(static_cast<double>(fetched->size()));
    metrics.batch_duration().Observe(
        std::chrono::duration<double>(steady_clock::now() - started).count());
    if (processor.StoreUnavailable()) {
      health.store_ok = false;
      observability::LogWarn("database unavailable; pausing fetches", {{"consumer", options.name}});
    }
  }
  health.running = false;
}

}  // namespace evp::pipeline
