#pragma once
// The DLQ worker's decision for each dead letter. Nothing is acknowledged before its outcome
// is durable:
//  - fatal dead letters are recorded in exhausted_events at once (one attempt);
//  - retryable ones are re-applied through the same pipeline as the processor, after an
//    exponential backoff with jitter. The attempt count travels in the message headers: a
//    failed attempt republishes the dead letter with attempts+1 and a not-before time (the
//    PubAck comes before the ack of the old one), so counts survive redeliveries and worker
//    restarts, and a database outage (the store does not answer) burns no attempt;
//  - at DLQ_MAX_ATTEMPTS the event is exhausted as retries_exhausted;
//  - a DLQ message that cannot be decoded is still recorded, with its bytes.
// Not thread-safe: one per worker loop.
#include <deque>
#include <random>
#include <span>
#include <vector>

#include "config/config.hpp"
#include "observability/metrics.hpp"
#include "pipeline/ports.hpp"
#include "validation/schema_registry.hpp"

namespace evp::dlq {

class DlqHandler final : public pipeline::BatchHandler {
 public:
  DlqHandler(const Config& config, const validation::SchemaRegistry& schemas,
             pipeline::EventStore& store, pipeline::ExhaustedStore& exhausted,
             pipeline::DeadLetterSink& dlq, pipeline::Clock& clock, observability::Metrics& metrics,
             uint64_t seed = std::random_device{}());

  std::vector<pipeline::Decision> Process(std::span<const pipeline::InboundMessage> batch) override;
  bool StoreUnavailable() const override { return store_unavailable_; }

  // Outages this worker waited through do not count towards ORDERING_GRACE.
  void DatabaseWasUnavailable(std::chrono::milliseconds outage) override;

 private:
  pipeline::Decision HandleOne(const pipeline::InboundMessage& msg);
  pipeline::Decision Retry(const pipeline::InboundMessage& msg, DeadLetter dl);
  pipeline::Decision Record(const pipeline::InboundMessage& msg, const DeadLetter& dl,
                            const std::string& final_reason);
  // A failed read or write of exhausted_events: logs `what`, counts it, and NAKs the letter
  // with backoff (the database being away stops the rest of the batch).
  pipeline::Decision StoreFailed(const pipeline::InboundMessage& msg, const DeadLetter& dl,
                                 const pipeline::StoreError& error, const char* what);

  const Config& config_;
  const validation::SchemaRegistry& schemas_;
  pipeline::EventStore& store_;
  pipeline::ExhaustedStore& exhausted_;
  pipeline::DeadLetterSink& dlq_;
  pipeline::Clock& clock_;
  observability::Metrics& metrics_;
  std::deque<std::pair<int64_t, int64_t>> outages_;  // (end, length) in unix ms, the latest
  std::mt19937_64 rng_;
  bool store_unavailable_ = false;
};

// Rebuilds a dead letter from a DLQ message; one that cannot be decoded becomes a fatal
// dead letter that keeps the bytes and says why.
DeadLetter DeadLetterFromMessage(const pipeline::InboundMessage& msg, int64_t now_ms);

}  // namespace evp::dlq
