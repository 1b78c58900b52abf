#pragma once
// The DLQ worker's decision for each dead letter. A dead letter is acknowledged only after
// its outcome is durable: fatal ones are recorded in exhausted_events at once; undecodable
// DLQ messages are still recorded with their bytes. Not thread-safe: one per worker loop.
#include <random>
#include <span>
#include <vector>

#include "config/config.hpp"
#include "observability/metrics.hpp"
#include "pipeline/ports.hpp"

namespace evp::dlq {

class DlqHandler final : public pipeline::BatchHandler {
 public:
  DlqHandler(const Config& config, pipeline::ExhaustedStore& exhausted, pipeline::Clock& clock,
             observability::Metrics& metrics, uint64_t seed = std::random_device{}());

  std::vector<pipeline::Decision> Process(std::span<const pipeline::InboundMessage> batch) override;
  bool StoreUnavailable() const override { return store_unavailable_; }

 private:
  pipeline::Decision HandleOne(const pipeline::InboundMessage& msg);

  const Config& config_;
  pipeline::ExhaustedStore& exhausted_;
  pipeline::Clock& clock_;
  observability::Metrics& metrics_;
  std::mt19937_64 rng_;
  bool store_unavailable_ = false;
};

// Rebuilds a dead letter from a DLQ message; one that cannot be decoded becomes a fatal
// dead letter that keeps the bytes and says why.
DeadLetter DeadLetterFromMessage(const pipeline::InboundMessage& msg, int64_t now_ms);

}  // namespace evp::dlq
