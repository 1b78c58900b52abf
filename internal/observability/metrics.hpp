#pragma once
// Every Prometheus metric of both binaries, named in one place (prefix evp_, base units,
// _total counters). No company_id label unless the tenant is in METRICS_TENANTS, so the
// series count does not grow with the number of tenants. Thread-safe (prometheus-cpp).
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/event.hpp"

namespace evp::observability {

// Outcome label of evp_events_total.
enum class EventOutcome {
  kApplied,
  kStale,
  kNotYetRetried,
  kTransientRetried,
  kDeadLettered,
  kOtherTenant,
};

// Stage label of evp_batch_stage_seconds: where one fetched batch spends its time in the
// events-processor. Prepare: decode, validate, build rows (the processor's CPU), plus
// publishing the dead letters of invalid events (their PubAcks awaited together). Write: tenant
// schemas and the batch's transactions (the database), plus the dead letters decided there
// (refused by the database, not found after the grace, out of deliveries). Settle: handing the acks
// and naks to the NATS client, which buffers them. A batch is prepared while the one before it is
// written.
enum class BatchStage { kPrepare, kWrite, kSettle };

class Metrics {
 public:
  Metrics(std::string_view binary, std::vector<std::string> labelled_tenants = {});

  prometheus::Registry& registry() { return *registry_; }
  std::shared_ptr<prometheus::Registry> shared_registry() { return registry_; }

  void CountEvent(std::string_view type, EventOutcome outcome, const std::string& company_id,
                  double n = 1);
  // Items of history batches (evp_history_items_total; not in the dlq-worker): `envelope` is
  // the batch's type (history.chats, ...); outcome applied, stale_skipped or dead_lettered.
  void CountHistoryItems(std::string_view envelope, EventOutcome outcome, double n = 1);
  void CountDeadLetter(ReasonCode code, ErrorClass cls);
  void CountExhausted(ReasonCode code, ErrorClass cls);
  void CountDbError(std::string_view error_class);
  void CountDlqMessage(std::string_view outcome);
  void CountRedelivery();
  void CountRedriven();

  prometheus::Histogram& batch_duration() { return *batch_duration_; }
  prometheus::Histogram& batch_size() { return *batch_size_; }
  prometheus::Histogram& batch_stage(BatchStage stage) {
    return *batch_stage_[static_cast<size_t>(stage)];
  }
  prometheus::Histogram& end_to_end_latency() { return *end_to_end_; }
  prometheus::Histogram& dlq_processing_duration() { return *dlq_processing_; }
  prometheus::Gauge& ready() { return *ready_; }
  prometheus::Gauge& ConsumerPending(const std::string& consumer);
  prometheus::Gauge& ConsumerAckPending(const std::string& consumer);
  prometheus::Gauge& dlq_busy_workers() { return *dlq_busy_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* events_;
  prometheus::Family<prometheus::Counter>* tenant_events_;
  prometheus::Family<prometheus::Counter>* dead_letters_;
  prometheus::Family<prometheus::Counter>* exhausted_;
  prometheus::Family<prometheus::Counter>* db_errors_;
  prometheus::Family<prometheus::Counter>* dlq_messages_;
  prometheus::Family<prometheus::Gauge>* pending_;
  prometheus::Family<prometheus::Gauge>* ack_pending_;
  prometheus::Counter* redeliveries_;
  prometheus::Counter* redriven_;
  prometheus::Family<prometheus::Counter>* history_items_ = nullptr;
  prometheus::Histogram* batch_duration_;
  prometheus::Histogram* batch_size_;
  std::array<prometheus::Histogram*, 3> batch_stage_{};
  prometheus::Histogram* end_to_end_;
  prometheus::Histogram* dlq_processing_;
  prometheus::Gauge* ready_;
  prometheus::Gauge* dlq_busy_;
  std::vector<std::string> labelled_tenants_;
  // evp_events_total children already looked up: counting is per event, and Family::Add
  // builds a label map and hashes it on every call.
  struct EventCounter {
    std::string type;
    EventOutcome outcome;
    prometheus::Counter* counter;
  };
  std::mutex event_counters_mu_;
  std::vector<EventCounter> event_counters_;
};

// Text exposition format of everything in the registry.
std::string Serialize(prometheus::Registry& registry);

}  // namespace evp::observability
