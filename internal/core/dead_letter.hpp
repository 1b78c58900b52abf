#pragma once
// A dead letter: an event that failed, with everything needed to retry it or to explain it.
// It travels on v1.dlq.<company_id> as the exact original bytes (body) plus headers, so bodies
// that are not valid JSON or UTF-8 survive untouched.
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "core/event.hpp"
#include "core/result.hpp"

namespace evp {

struct DeadLetter {
  std::string original;        // exact bytes (a history item's own JSON for item failures)
  std::string source_subject;  // where the event was published
  std::string company_id;      // raw tenant token (may be invalid); subject's on mismatch
  ErrorClass error_class = ErrorClass::kFatal;
  std::string reason;           // "<code>: <message>"
  int attempts = 1;             // attempts made so far
  int64_t first_failed_ms = 0;  // unix milliseconds
  int64_t last_failed_ms = 0;
  std::string source_stream;
  uint64_t stream_seq = 0;
  int64_t published_ns = 0;           // JetStream publish time of the original (0 when unknown)
  std::string orig_msg_id;            // Nats-Msg-Id of the original, if any
  std::optional<int64_t> item_index;  // history item index
  int64_t not_before_ms = 0;          // the DLQ worker retries it no earlier than this (unix ms)
  std::string trace_id;               // the publisher's trace id, if it sent one
  // An update whose target row was missing when it was last tried ("chat_id=c1"): until its
  // ORDERING_GRACE is over the DLQ worker looks for the row again, and such looks do not
  // count towards DLQ_MAX_ATTEMPTS. Empty for every other letter.
  std::string waiting_for_row;

  // Unique per event (stream, sequence, publish time, item): one exhausted row per event.
  // The publish time keeps keys unique when a stream is recreated and sequences restart.
  std::string IdempotencyKey() const;
  // Nats-Msg-Id of this DLQ message: the same event at the same attempt is deduplicated.
  std::string DlqMsgId() const;
  // Reason code parsed from `reason`, if it starts with a known code.
  std::optional<ReasonCode> Code() const;
};

namespace dlq_headers {
inline constexpr const char* kSourceSubject = "Evp-Source-Subject";
inline constexpr const char* kCompanyId = "Evp-Company-Id";
inline constexpr const char* kErrorClass = "Evp-Error-Class";
inline constexpr const char* kReason = "Evp-Reason";
inline constexpr const char* kAttempts = "Evp-Attempts";
inline constexpr const char* kFirstFailedAt = "Evp-First-Failed-At";
inline constexpr const char* kLastFailedAt = "Evp-Last-Failed-At";
inline constexpr const char* kSourceStream = "Evp-Source-Stream";
inline constexpr const char* kStreamSeq = "Evp-Stream-Seq";
inline constexpr const char* kPublishedAt = "Evp-Published-At";
inline constexpr const char* kOrigMsgId = "Evp-Orig-Msg-Id";
inline constexpr const char* kItemIndex = "Evp-Item-Index";
inline constexpr const char* kRedriveOf = "Evp-Redrive-Of";
inline constexpr const char* kNotBefore = "Evp-Not-Before";
inline constexpr const char* kTraceId = "Evp-Trace-Id";
inline constexpr const char* kWaitingForRow = "Evp-Waiting-For-Row";
}  // namespace dlq_headers

using HeaderMap = std::map<std::string, std::string>;

// The trace id a publisher sent with an event: the trace-id of a W3C `traceparent` header,
// else the value of `Evp-Trace-Id` or `X-Trace-Id` (printable ASCII, at most 128 bytes).
// Empty when there is none.
std::string TraceIdOf(const HeaderMap& headers);

// Header values never carry CR/LF or other control characters.
HeaderMap EncodeDeadLetterHeaders(const DeadLetter& dl);
// Rebuilds a dead letter from headers and body; an error names the missing/bad header.
Result<DeadLetter, std::string> DecodeDeadLetter(const HeaderMap& headers, std::string body);

}  // namespace evp
