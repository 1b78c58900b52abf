#pragma once
// The fetch -> process -> settle loop of one durable consumer. Stops fetching while the
// database is unavailable (backpressure instead of burning deliveries) and resumes when it
// answers again. On stop it finishes and settles the in-flight batch, then returns.
#include <atomic>
#include <chrono>
#include <string>

#include "observability/metrics.hpp"
#include "pipeline/batch_processor.hpp"
#include "pipeline/ports.hpp"

namespace evp::pipeline {

struct LoopOptions {
  std::string name;  // consumer name, for logs and metrics
  int batch_size = 1000;
  std::chrono::milliseconds max_wait{100};
  // When > 0, a helper thread sends in-progress acks at this interval while a batch is
  // processed (long history batches).
  std::chrono::milliseconds heartbeat{0};
  std::chrono::milliseconds lag_interval{2000};  // consumer info for the lag gauges
  // RunPipelinedLoop: pull the next batch while the current one is prepared (one more batch
  // held in memory and unacknowledged).
  bool fetch_ahead = false;
};

// Shared health of a loop, read by /readyz.
struct LoopHealth {
  std::atomic<bool> store_ok{true};
  std::atomic<bool> source_ok{true};
  std::atomic<bool> running{false};
};

void RunConsumerLoop(EventSource& source, BatchHandler& processor, EventStore& store,
                     observability::Metrics& metrics, const LoopOptions& options,
                     const std::atomic<bool>& stop, LoopHealth& health);

// As RunConsumerLoop, but overlaps the fetch and preparation of the next batch with the
// write of the current one (Complete calls stay in batch order); with fetch_ahead, the
// batch after that is pulled meanwhile too.
void RunPipelinedLoop(EventSource& source, BatchProcessor& processor, EventStore& store,
                      observability::Metrics& metrics, const LoopOptions& options,
                      const std::atomic<bool>& stop, LoopHealth& health);

// Sleeps up to d, waking early when stop becomes true.
void SleepUnlessStopped(std::chrono::milliseconds d, const std::atomic<bool>& stop);

}  // namespace evp::pipeline
