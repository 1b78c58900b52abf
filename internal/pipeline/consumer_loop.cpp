#include "pipeline/consumer_loop.hpp"

#include <algorithm>
#include <functional>
#include <future>
#include <optional>
#include <thread>

#include "core/worker_thread.hpp"
#include "observability/logging.hpp"
#include "pipeline/heartbeats.hpp"

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

// Fetches that fail in a row, while connected, before the source recreates its consumer.
constexpr int kFailedFetchesBeforeRecovery = 1;

// Sets the lag gauges from the consumer info; false when it cannot be read.
bool ReadLag(EventSource& source, prometheus::Gauge& pending_gauge,
             prometheus::Gauge& ack_pending_gauge) {
  uint64_t pending = 0;
  uint64_t ack_pending = 0;
  if (!source.Lag(&pending, &ack_pending)) return false;
  pending_gauge.Set(static_cast<double>(pending));
  ack_pending_gauge.Set(static_cast<double>(ack_pending));
  return true;
}

void UpdateLag(EventSource& source, const LoopOptions& options, steady_clock::time_point& next,
               prometheus::Gauge& pending_gauge, prometheus::Gauge& ack_pending_gauge,
               LoopHealth& health) {
  if (steady_clock::now() < next) return;
  if (!ReadLag(source, pending_gauge, ack_pending_gauge) && source.Connected()) {
    // Connected, yet the consumer cannot be read: deleted (with its stream, maybe) while
    // idle fetches just time out. Recreate it; not ready meanwhile (the next fetch that
    // works says otherwise).
    health.source_ok = false;
    source.Recover();
  }
  next = steady_clock::now() + options.lag_interval;
}

// Waits while the database is unreachable, calling `tick` (the lag gauges keep moving: the
// backlog grows during an outage), then tells the handler how long it waited; false when
// stopped meanwhile.
bool WaitForStore(EventStore& store, BatchHandler& handler, const std::atomic<bool>& stop,
                  LoopHealth& health, const LoopOptions& options,
                  const std::function<void()>& tick) {
  const auto paused = steady_clock::now();
  if (!health.store_ok.load()) {
    observability::LogInfo("fetching paused until the database answers",
                           {{"consumer", options.name}});
  }
  while (!health.store_ok.load()) {
    if (stop.load()) return false;
    tick();
    if (store.Ping()) {
      health.store_ok = true;
      observability::LogInfo("database reachable again; resuming", {{"consumer", options.name}});
      handler.DatabaseWasUnavailable(
          std::chrono::duration_cast<milliseconds>(steady_clock::now() - paused));
      return true;
    }
    SleepUnlessStopped(milliseconds(500), stop);
  }
  return true;
}

// At shutdown: a pull request may deliver after its fetch returned. Writing those messages
// now, rather than handing them back, leaves nothing for redelivery.
void WriteLateDeliveries(EventSource& source, BatchHandler& handler, const LoopHealth& health) {
  if (!health.store_ok.load() || !health.source_ok.load()) return;  // the source hands them back
  FetchedBatch late = source.FetchLate();
  if (late.messages.empty()) return;
  observability::LogInfo("writing messages delivered after the last fetch",
                         {{"messages", late.messages.size()}});
  source.Settle(late.token, handler.Process(late.messages));
}

}  // namespace

void RunPipelinedLoop(EventSource& source, BatchProcessor& processor, EventStore& store,
                      observability::Metrics& metrics, const LoopOptions& options,
                      const std::atomic<bool>& stop, LoopHealth& health) {
  // While batch N is written (writer thread), batch N+1 is fetched and prepared here.
  struct InFlight {
    FetchedBatch batch;
    std::unique_ptr<PreparedBatch> prepared;
    steady_clock::time_point started;
    // Keeps the batch's messages alive on the server while they wait and while they are
    // written (a batch that creates new tenant schemas can take longer than AckWait).
    std::unique_ptr<Heartbeats::Beat> heartbeat;
  };
  Heartbeats heartbeats(source, options.heartbeat);  // outlives every batch below
  health.running = true;
  auto next_lag = steady_clock::now();
  auto& pending_gauge = metrics.ConsumerPending(options.name);
  auto& ack_pending_gauge = metrics.ConsumerAckPending(options.name);
  auto update_lag = [&] {
    UpdateLag(source, options, next_lag, pending_gauge, ack_pending_gauge, health);
  };
  auto& prepare_stage = metrics.batch_stage(observability::BatchStage::kPrepare);
  auto& write_stage = metrics.batch_stage(observability::BatchStage::kWrite);
  auto& settle_stage = metrics.batch_stage(observability::BatchStage::kSettle);
  std::optional<InFlight> writing;
  int failed_fetches = 0;
  std::future<std::vector<Decision>> written;
  auto settle = [&] {
    if (!writing) return;
    // The lag gauges stay fresh while a write takes long (a lock wait, a slow database): only
    // read here (no recovery), as a fetch may be in flight.
    while (written.wait_for(options.lag_interval) != std::future_status::ready) {
      ReadLag(source, pending_gauge, ack_pending_gauge);
    }
    std::vector<Decision> decisions = written.get();
    const auto settling = steady_clock::now();
    source.Settle(writing->batch.token, decisions);
    settle_stage.Observe(std::chrono::duration<double>(steady_clock::now() - settling).count());
    metrics.batch_size().Observe(static_cast<double>(writing->batch.messages.size()));
    metrics.batch_duration().Observe(
        std::chrono::duration<double>(steady_clock::now() - writing->started).count());
    writing.reset();
    if (processor.StoreUnavailable()) {
      health.store_ok = false;
      observability::LogWarn("database unavailable; pausing fetches", {{"consumer", options.name}});
    }
  };
  // With fetch_ahead, the next pull runs on its own thread while a batch is prepared and
  // the previous one written; the source serves a fetch alongside settles and heartbeats.
  // Lag checks and recovery (which may replace the subscription) stay on this thread, and
  // only run while no fetch is in flight.
  // A pulled batch's in-progress acks start at once: one pulled ahead may wait longer than
  // ACK_WAIT (a batch creating many tenant schemas is written before it).
  struct Pulled {
    Result<FetchedBatch, std::string> fetched;
    std::unique_ptr<Heartbeats::Beat> heartbeat;
  };
  std::future<Pulled> ahead;
  // Pulled ahead before a database outage showed: written once the database is back (on
  // stop meanwhile, the source hands it back to the server).
  std::optional<Pulled> held;
  auto fetch = [&] {
    Pulled pulled{source.Fetch(options.batch_size, options.max_wait), nullptr};
    if (pulled.fetched.ok() && !pulled.fetched->messages.empty()) {
      pulled.heartbeat = heartbeats.Start(pulled.fetched->token);
    }
    return pulled;
  };
  auto next_pulled = [&]() -> Pulled {
    if (held) {
      Pulled p = std::move(*held);
      held.reset();
      return p;
    }
    if (ahead.valid()) return ahead.get();
    update_lag();
    return fetch();
  };
  // Declared after everything their tasks refer to: they finish and join first.
  std::optional<WorkerThread> fetcher;  // only with fetch_ahead
  if (options.fetch_ahead) fetcher.emplace();
  WorkerThread writer;
  while (true) {
    if (!held && !ahead.valid() && stop.load()) break;
    if (!health.store_ok.load()) {
      settle();
      if (ahead.valid()) held = ahead.get();
      if (!WaitForStore(store, processor, stop, health, options, update_lag)) break;
      continue;
    }
    Pulled pulled = next_pulled();
    auto& fetched = pulled.fetched;
    if (!fetched.ok()) {
      health.source_ok = false;
      observability::LogWarn("fetch failed",
                             {{"consumer", options.name}, {"error", fetched.error()}});
      settle();
      if (++failed_fetches >= kFailedFetchesBeforeRecovery) source.Recover();
      SleepUnlessStopped(milliseconds(500), stop);
      continue;
    }
    failed_fetches = 0;
    health.source_ok = true;
    if (fetched->messages.empty()) {
      settle();
      continue;
    }
    // Under backlog (a batch at least half full), pull the next one meanwhile.
    if (options.fetch_ahead &&
        fetched->messages.size() * 2 >= static_cast<size_t>(options.batch_size) && !stop.load() &&
        health.store_ok.load()) {
      update_lag();
      ahead = fetcher->Run(fetch);
    }
    InFlight next{std::move(fetched.value()), nullptr, steady_clock::now(),
                  std::move(pulled.heartbeat)};
    next.prepared = processor.Prepare(next.batch.messages);
    prepare_stage.Observe(
        std::chrono::duration<double>(steady_clock::now() - next.started).count());
    settle();  // the previous batch must be written before this one starts
    writing = std::move(next);
    written = writer.Run([&processor, &write_stage, w = &*writing] {
      const auto writing_started = steady_clock::now();
      std::vector<Decision> decisions = processor.Complete(w->batch.messages, *w->prepared);
      write_stage.Observe(
          std::chrono::duration<double>(steady_clock::now() - writing_started).count());
      return decisions;
    });
  }
  settle();
  WriteLateDeliveries(source, processor, health);
  health.running = false;
}

void RunConsumerLoop(EventSource& source, BatchHandler& processor, EventStore& store,
                     observability::Metrics& metrics, const LoopOptions& options,
                     const std::atomic<bool>& stop, LoopHealth& health) {
  Heartbeats heartbeats(source, options.heartbeat);
  health.running = true;
  auto next_lag = steady_clock::now();
  auto& pending_gauge = metrics.ConsumerPending(options.name);
  auto& ack_pending_gauge = metrics.ConsumerAckPending(options.name);
  auto update_lag = [&] {
    UpdateLag(source, options, next_lag, pending_gauge, ack_pending_gauge, health);
  };
  int failed_fetches = 0;
  while (!stop.load()) {
    // Backpressure: fetch nothing until the database answers.
    if (!WaitForStore(store, processor, stop, health, options, update_lag)) break;
    update_lag();
    auto fetched = source.Fetch(options.batch_size, options.max_wait);
    if (!fetched.ok()) {
      health.source_ok = false;
      observability::LogWarn("fetch failed",
                             {{"consumer", options.name}, {"error", fetched.error()}});
      if (++failed_fetches >= kFailedFetchesBeforeRecovery) source.Recover();
      SleepUnlessStopped(milliseconds(500), stop);
      continue;
    }
    failed_fetches = 0;
    health.source_ok = true;
    if (fetched->messages.empty()) continue;
    const auto started = steady_clock::now();
    std::vector<Decision> decisions;
    {
      auto heartbeat = heartbeats.Start(fetched->token);
      decisions = processor.Process(fetched->messages);
    }
    source.Settle(fetched->token, decisions);
    metrics.batch_size().Observe(static_cast<double>(fetched->messages.size()));
    metrics.batch_duration().Observe(
        std::chrono::duration<double>(steady_clock::now() - started).count());
    if (processor.StoreUnavailable()) {
      health.store_ok = false;
      observability::LogWarn("database unavailable; pausing fetches", {{"consumer", options.name}});
    }
  }
  WriteLateDeliveries(source, processor, health);
  health.running = false;
}

}  // namespace evp::pipeline
