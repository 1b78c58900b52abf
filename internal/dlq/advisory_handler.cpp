#include "dlq/advisory_handler.hpp"

#include <nlohmann/json.hpp>

#include "observability/logging.hpp"
#include "routing/subject.hpp"

namespace evp::dlq {

using pipeline::Decision;
using std::chrono::milliseconds;

AdvisoryHandler::AdvisoryHandler(const Config& config, MessageStore& messages,
                                 pipeline::DeadLetterSink& dlq, pipeline::ExhaustedStore& exhausted,
                                 pipeline::Clock& clock, observability::Metrics& metrics)
    : config_(config),
      messages_(messages),
      dlq_(dlq),
      exhausted_(exhausted),
      clock_(clock),
      metrics_(metrics) {}

std::vector<Decision> AdvisoryHandler::Process(std::span<const pipeline::InboundMessage> batch) {
  std::vector<Decision> out;
  out.reserve(batch.size());
  for (const auto& advisory : batch) out.push_back(HandleOne(advisory));
  return out;
}

Decision AdvisoryHandler::HandleOne(const pipeline::InboundMessage& advisory) {
  const auto doc = nlohmann::json::parse(advisory.data, nullptr, false);
  if (!doc.is_object() || !doc.contains("stream") || !doc.contains("stream_seq")) {
    observability::LogWarn("ignoring an advisory that is not a MAX_DELIVERIES advisory",
                           {{"subject", advisory.subject}});
    return Decision::Ack();
  }
  const std::string stream = doc.value("stream", "");
  const uint64_t seq = doc.value("stream_seq", uint64_t{0});
  const int64_t deliveries = doc.value("deliveries", int64_t{0});
  const std::string consumer = doc.value("consumer", "");
  if (stream != config_.realtime_stream && stream != config_.history_stream) {
    return Decision::Ack();  // not one of ours
  }
  auto original = messages_.Get(stream, seq);
  if (!original.ok()) {
    observability::LogWarn("cannot read back an undelivered event; will retry",
                           {{"stream", stream}, {"stream_seq", seq}, {"error", original.error()}});
    return Decision::Nak(milliseconds(1000));
  }
  DeadLetter dl;
  dl.error_class = ErrorClass::kRetryable;
  dl.attempts = 1;
  dl.first_failed_ms = dl.last_failed_ms = clock_.UnixMillis();
  dl.source_stream = stream;
  dl.stream_seq = seq;
  const std::string why = "delivered " + std::to_string(deliveries) + " times by consumer " +
                          consumer + " without an outcome (MaxDeliver reached)";
  if (!original.value()) {
    // Gone from the stream (retention): record what is known, with no payload.
    dl.source_subject = "(unknown)";
    dl.reason =
        Failure{ReasonCode::kRetriesExhausted, why + "; the event is no longer in the stream"}
            .Reason();
    auto r = exhausted_.RecordExhausted(dl, dl.reason);
    if (!r.ok()) return Decision::Nak(milliseconds(1000));
    metrics_.CountExhausted(ReasonCode::kRetriesExhausted, ErrorClass::kRetryable);
    return Decision::Ack();
  }
  const pipeline::InboundMessage& msg = **original;
  if (auto owner = routing::SubjectTenant(msg.subject); owner && !config_.AllowsTenant(*owner)) {
    // Every deployment's worker reads every advisory: an allow-listed one leaves other
    // tenants' events to their own deployment (its worker sees the same advisory).
    metrics_.CountDlqMessage("other_tenant_skipped");
    return Decision::Ack();
  }
  dl.original = msg.data;
  dl.source_subject = msg.subject;
  auto route = routing::ParseSubject(msg.subject);
  dl.company_id = route.ok() ? route->company_id : route.error().raw_tenant;
  dl.published_ns = msg.publish_time_ns;
  dl.orig_msg_id = msg.msg_id;
  dl.trace_id = TraceIdOf(msg.headers);
  dl.reason = Failure{ReasonCode::kRetriesExhausted, why}.Reason();
  auto published = dlq_.Publish(dl);
  if (!published.ok()) {
    observability::LogWarn("cannot dead-letter an undelivered event; will retry",
                           {{"stream", stream}, {"stream_seq", seq}, {"error", published.error()}});
    return Decision::Nak(milliseconds(1000));
  }
  metrics_.CountDeadLetter(ReasonCode::kRetriesExhausted, ErrorClass::kRetryable);
  observability::LogWarn("event reached MaxDeliver; sent to the DLQ for retry",
                         {{"company_id", dl.company_id},
                          {"subject", dl.source_subject},
                          {"stream_seq", seq},
                          {"deliveries", deliveries}});
  return Decision::Ack();
}

}  // namespace evp::dlq
