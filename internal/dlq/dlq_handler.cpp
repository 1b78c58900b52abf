#include "dlq/dlq_handler.hpp"

#include <algorithm>
#include <limits>

#include "core/backoff.hpp"
#include "observability/logging.hpp"
#include "pipeline/batch_processor.hpp"
#include "routing/subject.hpp"

namespace evp::dlq {

using pipeline::Decision;
using pipeline::InboundMessage;
using std::chrono::milliseconds;

namespace {

// Captures the dead letters of a re-applied event instead of publishing them: the worker
// records them itself, with the right attempt count.
class CapturingSink final : public pipeline::DeadLetterSink {
 public:
  Result<Unit, std::string> Publish(const DeadLetter& letter) override {
    letters.push_back(letter);
    return Unit{};
  }
  size_t MaxPayload() const override { return std::numeric_limits<size_t>::max(); }
  std::vector<DeadLetter> letters;
};

// The exhausted store must never be used directly by the inner processor (the capturing
// sink accepts every size); this guards that.
class RefusingExhaustedStore final : public pipeline::ExhaustedStore {
 public:
  Result<bool, pipeline::StoreError> RecordExhausted(const DeadLetter&,
                                                     const std::string&) override {
    return Err{pipeline::StoreError{pipeline::StoreErrorKind::kTransient, "unexpected"}};
  }
  Result<bool, pipeline::StoreError> IsRecorded(const std::string&) override {
    return Err{pipeline::StoreError{pipeline::StoreErrorKind::kTransient, "unexpected"}};
  }
};

}  // namespace

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

DlqHandler::DlqHandler(const Config& config, const validation::SchemaRegistry& schemas,
                       pipeline::EventStore& store, pipeline::ExhaustedStore& exhausted,
                       pipeline::DeadLetterSink& dlq, pipeline::Clock& clock,
                       observability::Metrics& metrics, uint64_t seed)
    : config_(config),
      schemas_(schemas),
      store_(store),
      exhausted_(exhausted),
      dlq_(dlq),
      clock_(clock),
      metrics_(metrics),
      rng_(seed) {}

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

Decision DlqHandler::Record(const InboundMessage& msg, const DeadLetter& dl,
                            const std::string& final_reason) {
  auto recorded = exhausted_.RecordExhausted(dl, final_reason);
  if (!recorded.ok()) {
    return StoreFailed(msg, dl, recorded.error(), "cannot record exhausted event; will retry");
  }
  if (recorded.value()) {
    if (auto code = ReasonCodeFromName(final_reason.substr(0, final_reason.find(':')))) {
      metrics_.CountExhausted(*code, dl.error_class);
    }
    observability::LogWarn("event exhausted", {{"company_id", dl.company_id},
                                               {"subject", dl.source_subject},
                                               {"stream_seq", dl.stream_seq},
                                               {"event_id", dl.orig_msg_id},
                                               {"trace_id", dl.trace_id},
                                               {"delivered", msg.delivered},
                                               {"attempts", dl.attempts},
                                               {"class", ErrorClassName(dl.error_class)},
                                               {"reason", final_reason}});
    metrics_.CountDlqMessage("exhausted");
  } else {
    observability::LogInfo("dead letter already recorded; acknowledging the duplicate",
                           {{"subject", dl.source_subject}, {"key", dl.IdempotencyKey()}});
    metrics_.CountDlqMessage("duplicate");
  }
  return Decision::Ack();
}

Decision DlqHandler::StoreFailed(const InboundMessage& msg, const DeadLetter& dl,
                                 const pipeline::StoreError& error, const char* what) {
  const bool transient = error.kind == pipeline::StoreErrorKind::kTransient;
  store_unavailable_ = store_unavailable_ || transient;
  metrics_.CountDbError(transient ? "transient" : "fatal");
  observability::LogWarn(what, {{"subject", dl.source_subject}, {"error", error.message}});
  metrics_.CountDlqMessage("store_error");
  return Decision::Nak(BackoffDelay(config_.dlq_base_delay, config_.dlq_max_delay,
                                    static_cast<int>(std::min<uint64_t>(msg.delivered, 30)), rng_));
}

void DlqHandler::DatabaseWasUnavailable(std::chrono::milliseconds outage) {
  outages_.emplace_back(clock_.UnixMillis(), outage.count());
  if (outages_.size() > 64) outages_.pop_front();
}

Decision DlqHandler::HandleOne(const InboundMessage& msg) {
  DeadLetter dl = DeadLetterFromMessage(msg, clock_.UnixMillis());
  if (auto owner = routing::SubjectTenant(dl.source_subject);
      owner && *owner == dl.company_id && !config_.AllowsTenant(dl.company_id)) {
    // An allow-listed deployment leaves other tenants' dead letters to their own worker
    // (each worker reads the whole DLQ stream): nothing of theirs lands in this database.
    metrics_.CountDlqMessage("other_tenant_skipped");
    return Decision::Ack();
  }
  if (dl.error_class == ErrorClass::kFatal) return Record(msg, dl, dl.reason);
  return Retry(msg, std::move(dl));
}

Decision DlqHandler::Retry(const InboundMessage& msg, DeadLetter dl) {
  const int64_t now_ms = clock_.UnixMillis();
  int64_t due_ms = dl.not_before_ms;
  if (due_ms == 0) {
    // A letter not scheduled by the worker yet (the processor's, or the advisory handler's):
    // the first retry waits about DLQ_BASE_DELAY after that failure. The jitter is drawn
    // from the event's own key, so every redelivery of the letter agrees on the time.
    std::mt19937_64 per_event(std::hash<std::string>{}(dl.IdempotencyKey()));
    due_ms = dl.last_failed_ms +
             BackoffDelay(config_.dlq_base_delay, config_.dlq_max_delay, 1, per_event).count();
  }
  // The worker schedules a retry at most DLQ_MAX_DELAY after it republishes the letter, or
  // at the end of an update's ORDERING_GRACE. A later time is corrupt or forged: it would
  // hold the letter, unacknowledged and silent, until the stream's max age deleted it.
  if (msg.publish_time_ns > 0) {
    const int64_t latest_ms = msg.publish_time_ns / 1'000'000 +
                              std::max(config_.dlq_max_delay, config_.ordering_grace).count() +
                              60'000;
    due_ms = std::min(due_ms, latest_ms);
  }
  if (due_ms > now_ms) {
    // Not due yet: wait without counting an attempt (at most DLQ_MAX_DELAY at a time).
    metrics_.CountDlqMessage("deferred");
    return Decision::Nak(std::min(milliseconds(due_ms - now_ms), config_.dlq_max_delay));
  }
  // A copy of a letter whose event is in exhausted_events already: a worker stopped between
  // recording the event and acknowledging its letter, or between republishing a retry and
  // acknowledging the letter before it, and JetStream delivered the old one again. The
  // event's outcome is decided; applying it now would leave it both applied and exhausted.
  auto recorded = exhausted_.IsRecorded(dl.IdempotencyKey());
  if (!recorded.ok()) {
    return StoreFailed(msg, dl, recorded.error(), "cannot look up exhausted events; will retry");
  }
  if (recorded.value()) {
    observability::LogInfo("dead letter already recorded; acknowledging the duplicate",
                           {{"subject", dl.source_subject}, {"key", dl.IdempotencyKey()}});
    metrics_.CountDlqMessage("duplicate");
    return Decision::Ack();
  }
  // Looks for an update's missing row are bounded by its ORDERING_GRACE, not by the count.
  if (dl.attempts >= config_.dlq_max_attempts && dl.waiting_for_row.empty()) {
    // Already out of attempts (a lowered DLQ_MAX_ATTEMPTS, or a forged count): no retry.
    dl.error_class = ErrorClass::kRetryable;
    return Record(
        msg, dl,
        Failure{ReasonCode::kRetriesExhausted,
                "no attempts left (" + std::to_string(dl.attempts) + " made): " + dl.reason}
            .Reason());
  }
  const int attempt = dl.attempts + 1;
  // Re-apply through the same pipeline as the processor, as a first delivery.
  InboundMessage replay;
  replay.subject = dl.source_subject;
  replay.data = dl.original;
  replay.msg_id = dl.orig_msg_id;
  replay.stream = dl.source_stream;
  replay.stream_seq = dl.stream_seq;
  replay.delivered = 1;
  replay.publish_time_ns = dl.published_ns;
  if (!dl.trace_id.empty()) replay.headers[dlq_headers::kTraceId] = dl.trace_id;
  CapturingSink sink;
  RefusingExhaustedStore no_direct_writes;
  pipeline::BatchProcessor processor(config_, schemas_, store_, sink, no_direct_writes, clock_,
                                     metrics_, rng_());
  const std::vector<Decision> decisions = processor.Process(std::span(&replay, 1));
  const pipeline::BatchStats& stats = processor.last_stats();

  if (!sink.letters.empty()) {
    // The event (or one of its history items) failed for good: record each with the
    // attempts made so far.
    Decision result = Decision::Ack();
    for (DeadLetter& letter : sink.letters) {
      letter.attempts = attempt;
      letter.first_failed_ms = dl.first_failed_ms;
      Decision d = Record(msg, letter, letter.reason);
      if (d.kind != Decision::Kind::kAck) result = d;
    }
    return result;
  }
  if (decisions[0].kind == Decision::Kind::kAck) {
    metrics_.CountDlqMessage("applied_on_retry");
    observability::LogInfo("event applied on retry", {{"company_id", dl.company_id},
                                                      {"subject", dl.source_subject},
                                                      {"stream_seq", dl.stream_seq},
                                                      {"event_id", dl.orig_msg_id},
                                                      {"trace_id", dl.trace_id},
                                                      {"delivered", msg.delivered},
                                                      {"attempts", attempt}});
    return Decision::Ack();
  }
  // A transient failure. When the database itself is unreachable this is an outage, not an
  // attempt of this event: wait (not ready) and keep the count.
  if (stats.store_unavailable && !store_.Ping()) {
    store_unavailable_ = true;
    metrics_.CountDlqMessage("deferred");
    return Decision::Nak(config_.dlq_base_delay);
  }
  // An update whose row is still missing once ORDERING_GRACE has passed since its first
  // failure is final (SPEC §11): not retried further. (A first failure in the future is
  // forged: the window counts from now.)
  int64_t grace_end_ms = std::min(dl.first_failed_ms, now_ms) + config_.ordering_grace.count();
  for (const auto& [end_ms, length_ms] : outages_) {
    if (end_ms > dl.first_failed_ms) grace_end_ms += length_ms;
  }
  if (stats.not_yet > 0 && now_ms >= grace_end_ms) {
    dl.attempts = attempt;
    dl.last_failed_ms = now_ms;
    dl.error_class = ErrorClass::kFatal;
    return Record(
        msg, dl,
        Failure{ReasonCode::kNotFoundAfterGrace,
                "target row (" + stats.not_yet_key + ") still missing " +
                    std::to_string(now_ms - dl.first_failed_ms) + " ms after the first failure (" +
                    std::to_string(attempt) + " attempts)"}
            .Reason());
  }
  const std::string last_error = stats.not_yet > 0
                                     ? "target row (" + stats.not_yet_key + ") missing"
                                 : stats.last_error.empty() ? "still failing"
                                                            : stats.last_error;
  dl.attempts = attempt;
  dl.last_failed_ms = now_ms;
  // Inside its window a missing row is "not yet", not a failure (SPEC §11): the look does not
  // count towards DLQ_MAX_ATTEMPTS, and the next one comes at the window's end.
  dl.waiting_for_row = stats.not_yet > 0 ? stats.not_yet_key : "";
  if (stats.not_yet == 0 && attempt >= config_.dlq_max_attempts) {
    dl.error_class = ErrorClass::kRetryable;
    return Record(msg, dl,
                  Failure{ReasonCode::kRetriesExhausted, "failed " + std::to_string(attempt) +
                                                             " attempts; last error: " + last_error}
                      .Reason());
  }
  // Schedule the next attempt (retry number `attempt`: about base * 2^(attempt - 1) after
  // this failure): the republished letter carries the count; the old one is acked only
  // after JetStream stored the new one.
  dl.not_before_ms =
      now_ms + BackoffDelay(config_.dlq_base_delay, config_.dlq_max_delay, attempt, rng_).count();
  // A missing row gets the rest of its window before the next look.
  if (stats.not_yet > 0) dl.not_before_ms = std::max(dl.not_before_ms, grace_end_ms);
  auto published = dlq_.Publish(dl);
  if (!published.ok()) {
    observability::LogWarn("cannot reschedule dead letter; will retry",
                           {{"subject", dl.source_subject}, {"error", published.error()}});
    return Decision::Nak(config_.dlq_base_delay);
  }
  metrics_.CountDlqMessage("retry_scheduled");
  observability::LogInfo("retry failed; rescheduled", {{"company_id", dl.company_id},
                                                       {"subject", dl.source_subject},
                                                       {"stream_seq", dl.stream_seq},
                                                       {"event_id", dl.orig_msg_id},
                                                       {"trace_id", dl.trace_id},
                                                       {"delivered", msg.delivered},
                                                       {"attempts", attempt},
                                                       {"error", last_error}});
  return Decision::Ack();
}

}  // namespace evp::dlq
