#include "dlq/dlq_handler.hpp"

#include "core/backoff.hpp"
#include "observability/logging.hpp"

namespace evp::dlq {

using pipeline::Decision;
using pipeline::InboundMessage;

DeadLetter DeadLetterFromMessage(const InboundMessage& msg, int64_t now_ms) {
  auto decoded = DecodeDeadLetter(msg.headers, msg.data);
  if (decoded.ok()) return std::move(decoded).value();
  DeadLetter dl;
  dl.original = msg.data;
  dl.source_subject = msg.subject;
  auto dot = msg.subject.rfind('.');
  dl.company_id = dot == std::string::npos ? "" : msg.subject.substr(dot + 1);
  dl.error_class = ErrorClass::kFatal;
  dl.reason = Failure{ReasonCode::kMalformedJson,
                      "DLQ message without valid dead-letter headers (" + decoded.error() + ")"}
                  .Reason();
  dl.attempts = 1;
  dl.first_failed_ms = dl.last_failed_ms = now_ms;
  // Keyed by the DLQ message itself: its source is unknown.
  dl.source_stream = msg.stream;
  dl.stream_seq = msg.stream_seq;
  dl.published_ns = msg.publish_time_ns;
  dl.orig_msg_id = msg.msg_id;
  return dl;
}

DlqHandler::DlqHandler(const Config& config, pipeline::ExhaustedStore& exhausted,
                       pipeline::Clock& clock, observability::Metrics& metrics, uint64_t seed)
    : config_(config), exhausted_(exhausted), clock_(clock), metrics_(metrics), rng_(seed) {}

std::vector<Decision> DlqHandler::Process(std::span<const InboundMessage> batch) {
  store_unavailable_ = false;
  std::vector<Decision> out;
  out.reserve(batch.size());
  for (const InboundMessage& msg : batch) {
    if (store_unavailable_) {
      // The database went away during this batch: the rest waits, untouched.
      out.push_back(Decision::Nak(config_.dlq_base_delay));
      continue;
    }
    const auto started = std::chrono::steady_clock::now();
    metrics_.dlq_busy_workers().Increment();
    out.push_back(HandleOne(msg));
    metrics_.dlq_busy_workers().Decrement();
    metrics_.dlq_processing_duration().Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  }
  return out;
}

Decision DlqHandler::HandleOne(const InboundMessage& msg) {
  DeadLetter dl = DeadLetterFromMessage(msg, clock_.UnixMillis());
  std::string final_reason = dl.reason;
  if (dl.error_class == ErrorClass::kRetryable && !dl.Code()) {
    final_reason = Failure{ReasonCode::kRetriesExhausted, dl.reason}.Reason();
  }
  auto recorded = exhausted_.RecordExhausted(dl, final_reason);
  if (!recorded.ok()) {
    if (recorded.error().kind == pipeline::StoreErrorKind::kTransient) store_unavailable_ = true;
    metrics_.CountDbError(
        recorded.error().kind == pipeline::StoreErrorKind::kTransient ? "transient" : "fatal");
    observability::LogWarn("cannot record exhausted event; will retry",
                           {{"subject", dl.source_subject}, {"error", recorded.error().message}});
    metrics_.CountDlqMessage("store_error");
    return Decision::Nak(BackoffDelay(config_.dlq_base_delay, config_.dlq_max_delay,
                                      static_cast<int>(std::min<uint64_t>(msg.delivered, 30)),
                                      rng_));
  }
  if (recorded.value()) {
    if (auto code = ReasonCodeFromName(final_reason.substr(0, final_reason.find(':')))) {
      metrics_.CountExhausted(*code, dl.error_class);
    }
    observability::LogInfo("event exhausted", {{"company_id", dl.company_id},
                                               {"subject", dl.source_subject},
                                               {"stream_seq", dl.stream_seq},
                                               {"reason", final_reason}});
    metrics_.CountDlqMessage("exhausted");
  } else {
    observability::LogInfo("dead letter already recorded; acknowledging the duplicate",
                           {{"subject", dl.source_subject}, {"key", dl.IdempotencyKey()}});
    metrics_.CountDlqMessage("duplicate");
  }
  return Decision::Ack();
}

}  // namespace evp::dlq
