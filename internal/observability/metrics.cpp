#include "observability/metrics.hpp"

#include <prometheus/text_serializer.h>

#include <algorithm>
#include <map>
#include <sstream>
#include <utility>

namespace evp::observability {
namespace {

std::string_view OutcomeName(EventOutcome o) {
  switch (o) {
    case EventOutcome::kApplied:
      return "applied";
    case EventOutcome::kStale:
      return "stale_skipped";
    case EventOutcome::kNotYetRetried:
      return "not_yet_retried";
    case EventOutcome::kTransientRetried:
      return "transient_retried";
    case EventOutcome::kDeadLettered:
      return "dead_lettered";
    case EventOutcome::kOtherTenant:
      return "other_tenant_skipped";
  }
  return "unknown";
}

constexpr EventOutcome kAllOutcomes[] = {
    EventOutcome::kApplied,          EventOutcome::kStale,        EventOutcome::kNotYetRetried,
    EventOutcome::kTransientRetried, EventOutcome::kDeadLettered, EventOutcome::kOtherTenant,
};

// Dense around the latency objectives (10 ms p50, 50 ms p99), so quantiles read from the
// buckets are close to the truth there.
prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
          0.1,   0.15,   0.2,   0.25,   0.5,  1,     2.5,  5,    10,   30};
}

}  // namespace

Metrics::Metrics(std::string_view binary, std::vector<std::string> labelled_tenants)
    : registry_(std::make_shared<prometheus::Registry>()),
      labelled_tenants_(std::move(labelled_tenants)) {
  auto& r = *registry_;
  events_ = &prometheus::BuildCounter()
                 .Name("evp_events_total")
                 .Help("Events handled, by event type and outcome")
                 .Register(r);
  tenant_events_ = &prometheus::BuildCounter()
                        .Name("evp_tenant_events_total")
                        .Help("Events handled for the tenants listed in METRICS_TENANTS")
                        .Register(r);
  dead_letters_ = &prometheus::BuildCounter()
                       .Name("evp_dead_letters_total")
                       .Help("Events published to the DLQ, by reason code and error class")
                       .Register(r);
  exhausted_ = &prometheus::BuildCounter()
                    .Name("evp_exhausted_total")
                    .Help("Events recorded in exhausted_events, by reason code and error class")
                    .Register(r);
  db_errors_ = &prometheus::BuildCounter()
                    .Name("evp_db_errors_total")
                    .Help("Database errors, by class (transient, fatal)")
                    .Register(r);
  dlq_messages_ = &prometheus::BuildCounter()
                       .Name("evp_dlq_messages_total")
                       .Help("DLQ messages handled by the worker, by outcome")
                       .Register(r);
  redeliveries_ = &prometheus::BuildCounter()
                       .Name("evp_redeliveries_total")
                       .Help("Deliveries that were not the first delivery of a message")
                       .Register(r)
                       .Add({});
  redriven_ = &prometheus::BuildCounter()
                   .Name("evp_redriven_events_total")
                   .Help("Events received again through eventctl exhausted redrive")
                   .Register(r)
                   .Add({});
  batch_duration_ = &prometheus::BuildHistogram()
                         .Name("evp_batch_duration_seconds")
                         .Help("Time to process one fetched batch, decode to ack")
                         .Register(r)
                         .Add({}, LatencyBuckets());
  batch_size_ = &prometheus::BuildHistogram()
                     .Name("evp_batch_size_messages")
                     .Help("Messages per fetched batch")
                     .Register(r)
                     .Add({}, prometheus::Histogram::BucketBoundaries{1, 10, 50, 100, 250, 500,
                                                                      1000, 2500, 5000, 10000});
  auto& stages = prometheus::BuildHistogram()
                     .Name("evp_batch_stage_seconds")
                     .Help(
                         "Time one fetched batch spends in each stage of the events-processor: "
                         "prepare (decode, validate, build rows, dead letters of invalid events), "
                         "write (tenant schemas and transactions, dead letters decided there), "
                         "settle (acks and naks handed to the NATS client)")
                     .Register(r);
  for (const auto& [stage, name] :
       {std::pair{BatchStage::kPrepare, "prepare"}, std::pair{BatchStage::kWrite, "write"},
        std::pair{BatchStage::kSettle, "settle"}}) {
    batch_stage_[static_cast<size_t>(stage)] = &stages.Add({{"stage", name}}, LatencyBuckets());
  }
  end_to_end_ = &prometheus::BuildHistogram()
                     .Name("evp_end_to_end_latency_seconds")
                     .Help("JetStream publish time to database commit")
                     .Register(r)
                     .Add({}, LatencyBuckets());
  dlq_processing_ = &prometheus::BuildHistogram()
                         .Name("evp_dlq_processing_duration_seconds")
                         .Help("Time to handle one DLQ message")
                         .Register(r)
                         .Add({}, LatencyBuckets());
  pending_ = &prometheus::BuildGauge()
                  .Name("evp_consumer_pending_messages")
                  .Help("Messages in the stream not yet delivered to the consumer (lag)")
                  .Register(r);
  ack_pending_ = &prometheus::BuildGauge()
                      .Name("evp_consumer_ack_pending_messages")
                      .Help("Messages delivered and not yet acknowledged")
                      .Register(r);
  ready_ = &prometheus::BuildGauge()
                .Name("evp_ready")
                .Help("1 when NATS, PostgreSQL and the consumers are ready")
                .Register(r)
                .Add({});
  dlq_busy_ = &prometheus::BuildGauge()
                   .Name("evp_dlq_busy_workers")
                   .Help("DLQ workers currently handling a message")
                   .Register(r)
                   .Add({});
  // Counters of every known label value exist from the start at 0: an alert on rate() or
  // increase() then sees the first dead letter after a restart, and a dashboard shows 0
  // rather than "no data". None of these grows with the number of tenants.
  for (EventType type : kAllEventTypes) {
    for (EventOutcome o : kAllOutcomes) CountEvent(EventTypeName(type), o, "", 0);
  }
  for (EventOutcome o : {EventOutcome::kDeadLettered, EventOutcome::kOtherTenant}) {
    CountEvent("unknown", o, "", 0);  // subjects without a route
  }
  // The tenants of METRICS_TENANTS (at most 20) too, so that their first event counts.
  for (const std::string& tenant : labelled_tenants_) {
    for (EventOutcome o : kAllOutcomes) {
      tenant_events_->Add({{"company_id", tenant}, {"outcome", std::string(OutcomeName(o))}});
    }
  }
  for (ReasonCode code : kAllReasonCodes) {
    const ErrorClass cls =
        code == ReasonCode::kRetriesExhausted ? ErrorClass::kRetryable : ErrorClass::kFatal;
    const std::map<std::string, std::string> labels = {
        {"reason", std::string(ReasonCodeName(code))}, {"class", std::string(ErrorClassName(cls))}};
    dead_letters_->Add(labels);
    exhausted_->Add(labels);
  }
  for (const char* cls : {"transient", "fatal"}) db_errors_->Add({{"class", cls}});
  if (binary != "dlq-worker") {  // the worker re-applies single items, counted per message
    history_items_ = &prometheus::BuildCounter()
                          .Name("evp_history_items_total")
                          .Help("Items of history batches, by batch type and outcome")
                          .Register(r);
    for (EventType t : kAllEventTypes) {
      if (!IsHistory(t)) continue;
      for (EventOutcome o :
           {EventOutcome::kApplied, EventOutcome::kStale, EventOutcome::kDeadLettered}) {
        history_items_->Add(
            {{"type", std::string(EventTypeName(t))}, {"outcome", std::string(OutcomeName(o))}});
      }
    }
  }
  if (binary == "dlq-worker") {
    for (const char* outcome : {"exhausted", "duplicate", "applied_on_retry", "retry_scheduled",
                                "deferred", "store_error", "other_tenant_skipped"}) {
      dlq_messages_->Add({{"outcome", outcome}});
    }
  }
  prometheus::BuildGauge()
      .Name("evp_build_info")
      .Help("Build information")
      .Register(r)
      .Add({{"version", EVP_VERSION}, {"binary", std::string(binary)}})
      .Set(1);
}

void Metrics::CountEvent(std::string_view type, EventOutcome outcome, const std::string& company_id,
                         double n) {
  prometheus::Counter* counter = nullptr;
  {
    std::lock_guard lock(event_counters_mu_);
    for (const EventCounter& c : event_counters_) {
      if (c.outcome == outcome && c.type == type) {
        counter = c.counter;
        break;
      }
    }
    if (counter == nullptr) {
      counter = &events_->Add(
          {{"type", std::string(type)}, {"outcome", std::string(OutcomeName(outcome))}});
      event_counters_.push_back({std::string(type), outcome, counter});
    }
  }
  counter->Increment(n);
  if (!labelled_tenants_.empty() && std::find(labelled_tenants_.begin(), labelled_tenants_.end(),
                                              company_id) != labelled_tenants_.end()) {
    tenant_events_
        ->Add({{"company_id", company_id}, {"outcome", std::string(OutcomeName(outcome))}})
        .Increment(n);
  }
}

void Metrics::CountHistoryItems(std::string_view envelope, EventOutcome outcome, double n) {
  if (history_items_ == nullptr || n <= 0) return;
  history_items_
      ->Add({{"type", std::string(envelope)}, {"outcome", std::string(OutcomeName(outcome))}})
      .Increment(n);
}

void Metrics::CountDeadLetter(ReasonCode code, ErrorClass cls) {
  dead_letters_
      ->Add({{"reason", std::string(ReasonCodeName(code))},
             {"class", std::string(ErrorClassName(cls))}})
      .Increment();
}

void Metrics::CountExhausted(ReasonCode code, ErrorClass cls) {
  exhausted_
      ->Add({{"reason", std::string(ReasonCodeName(code))},
             {"class", std::string(ErrorClassName(cls))}})
      .Increment();
}

void Metrics::CountDbError(std::string_view error_class) {
  db_errors_->Add({{"class", std::string(error_class)}}).Increment();
}

void Metrics::CountDlqMessage(std::string_view outcome) {
  dlq_messages_->Add({{"outcome", std::string(outcome)}}).Increment();
}

void Metrics::CountRedelivery() { redeliveries_->Increment(); }

void Metrics::CountRedriven() { redriven_->Increment(); }

prometheus::Gauge& Metrics::ConsumerPending(const std::string& consumer) {
  return pending_->Add({{"consumer", consumer}});
}

prometheus::Gauge& Metrics::ConsumerAckPending(const std::string& consumer) {
  return ack_pending_->Add({{"consumer", consumer}});
}

std::string Serialize(prometheus::Registry& registry) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry.Collect());
  return out.str();
}

}  // namespace evp::observability
