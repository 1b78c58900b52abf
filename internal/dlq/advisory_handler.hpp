#pragma once
// Safety net for JetStream's MaxDeliver: when a realtime or history event is delivered
// MAX_DELIVER times without any outcome (e.g. the processor crashed on every delivery), the
// server gives up on it and emits a MAX_DELIVERIES advisory. Those advisories are kept in
// their own stream; this handler turns each into a retryable dead letter with the event's
// exact bytes (read back from the stream), so the DLQ worker retries or records it. Not
// thread-safe: one per loop.
#include <optional>
#include <span>
#include <vector>

#include "config/config.hpp"
#include "observability/metrics.hpp"
#include "pipeline/ports.hpp"

namespace evp::dlq {

// Reads a stored message back from a stream.
class MessageStore {
 public:
  virtual ~MessageStore() = default;
  // nullopt when the stream no longer holds it (retention); an error when unreachable.
  virtual Result<std::optional<pipeline::InboundMessage>, std::string> Get(
      const std::string& stream, uint64_t seq) = 0;
};

class AdvisoryHandler final : public pipeline::BatchHandler {
 public:
  AdvisoryHandler(const Config& config, MessageStore& messages, pipeline::DeadLetterSink& dlq,
                  pipeline::ExhaustedStore& exhausted, pipeline::Clock& clock,
                  observability::Metrics& metrics);
  std::vector<pipeline::Decision> Process(std::span<const pipeline::InboundMessage> batch) override;
  bool StoreUnavailable() const override { return false; }

 private:
  pipeline::Decision HandleOne(const pipeline::InboundMessage& advisory);

  const Config& config_;
  MessageStore& messages_;
  pipeline::DeadLetterSink& dlq_;
  pipeline::ExhaustedStore& exhausted_;
  pipeline::Clock& clock_;
  observability::Metrics& metrics_;
};

}  // namespace evp::dlq
