// libFuzzer target: dead-letter decoding (evp::DecodeDeadLetter) on headers and a body taken
// from the input, then the round trip EncodeDeadLetterHeaders -> DecodeDeadLetter.
//
// Input format: header lines "Key: value" separated by '\n' (a line without ':' is skipped,
// the first occurrence of a key wins, as natsMsgHeader_Get returns the first value), then an
// empty line, then the body (exact bytes, possibly not UTF-8). No empty line: no body.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <string_view>

#include "core/dead_letter.hpp"
#include "fuzz_check.hpp"

namespace {

using evp::DeadLetter;
using evp::HeaderMap;
using evp::fuzz::Check;
namespace h = evp::dlq_headers;

constexpr const char* kAllHeaders[] = {
    h::kSourceSubject, h::kCompanyId,     h::kErrorClass,   h::kReason,
    h::kAttempts,      h::kFirstFailedAt, h::kLastFailedAt, h::kSourceStream,
    h::kStreamSeq,     h::kPublishedAt,   h::kOrigMsgId,    h::kItemIndex,
    h::kRedriveOf,     h::kNotBefore,     h::kTraceId,      h::kWaitingForRow,
};

bool IsKnownHeader(std::string_view name) {
  for (const char* known : kAllHeaders) {
    if (name == known) return true;
  }
  return false;
}

void ParseInput(std::string_view in, HeaderMap& headers, std::string& body) {
  std::string_view head = in;
  const size_t split = in.find("\n\n");
  if (split != std::string_view::npos) {
    head = in.substr(0, split);
    body.assign(in.substr(split + 2));
  }
  while (!head.empty()) {
    const size_t eol = head.find('\n');
    std::string_view line = head.substr(0, eol);
    head = eol == std::string_view::npos ? std::string_view() : head.substr(eol + 1);
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view value = line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    headers.emplace(std::string(line.substr(0, colon)), std::string(value));
  }
}

// Header values are sanitized on encoding (control bytes -> ' ', long values cut). A value
// that needs neither must survive exactly; any other must come back as a cleaned prefix.
// `kept`: the longest value the field keeps whole (the trace id is cut at 128 bytes).
void CheckText(const std::string& before, const std::string& after, const char* field,
               size_t kept = 256) {
  Check(!evp::fuzz::HasControl(after), "round-tripped value has control bytes", field);
  if (!evp::fuzz::HasControl(before) && before.size() <= kept) {
    Check(after == before, "value changed in round trip", field);
    return;
  }
  Check(after.size() <= before.size(), "round-tripped value grew", field);
  for (size_t i = 0; i < after.size(); ++i) {
    Check(after[i] == before[i] || (evp::fuzz::IsControl(before[i]) && after[i] == ' '),
          "round-tripped value is not a cleaned prefix", field);
  }
}

void CheckDecodedFromHeaders(const DeadLetter& dl, const HeaderMap& headers,
                             const std::string& body) {
  Check(dl.original == body, "original bytes differ from the body");
  Check(dl.source_subject == headers.at(h::kSourceSubject), "source_subject not verbatim");
  Check(dl.reason == headers.at(h::kReason), "reason not verbatim");
  Check(dl.source_stream == headers.at(h::kSourceStream), "source_stream not verbatim");
  auto company = headers.find(h::kCompanyId);
  Check(dl.company_id == (company == headers.end() ? "" : company->second),
        "company_id not verbatim");
  Check(dl.attempts >= 0, "negative attempts accepted");
  Check(dl.item_index.has_value() == (headers.count(h::kItemIndex) == 1),
        "item_index presence differs from its header");
}

void Run(std::string_view input) {
  HeaderMap headers;
  std::string body;
  ParseInput(input, headers, body);

  auto decoded = evp::DecodeDeadLetter(headers, body);
  if (!decoded.ok()) {
    const std::string& e = decoded.error();
    std::string_view name = e;
    if (name.starts_with("missing header ")) {
      name.remove_prefix(15);
    } else if (name.starts_with("bad header ")) {
      name.remove_prefix(11);
    } else {
      evp::fuzz::Fail("decode error does not name a header", e);
    }
    Check(IsKnownHeader(name), "decode error names an unknown header", e);
    return;
  }
  const DeadLetter& dl = decoded.value();
  CheckDecodedFromHeaders(dl, headers, body);
  (void)dl.IdempotencyKey();
  (void)dl.DlqMsgId();
  (void)dl.Code();

  const HeaderMap encoded = evp::EncodeDeadLetterHeaders(dl);
  for (const auto& [name, value] : encoded) {
    Check(IsKnownHeader(name), "encoded an unknown header", name);
    Check(!evp::fuzz::HasControl(value), "encoded header value has control bytes", name);
  }
  auto again = evp::DecodeDeadLetter(encoded, dl.original);
  if (!again.ok()) evp::fuzz::Fail("re-decoding encoded headers failed", again.error());
  const DeadLetter& back = again.value();
  Check(back.original == dl.original, "original bytes changed in round trip");
  CheckText(dl.source_subject, back.source_subject, "source_subject");
  CheckText(dl.company_id, back.company_id, "company_id");
  CheckText(dl.reason, back.reason, "reason");
  CheckText(dl.source_stream, back.source_stream, "source_stream");
  CheckText(dl.orig_msg_id, back.orig_msg_id, "orig_msg_id");
  CheckText(dl.trace_id, back.trace_id, "trace_id", 128);
  CheckText(dl.waiting_for_row, back.waiting_for_row, "waiting_for_row", 1024);
  Check(back.error_class == dl.error_class, "error_class changed");
  Check(back.attempts == dl.attempts, "attempts changed");
  Check(back.first_failed_ms == dl.first_failed_ms, "first_failed_ms changed");
  Check(back.last_failed_ms == dl.last_failed_ms, "last_failed_ms changed");
  Check(back.stream_seq == dl.stream_seq, "stream_seq changed");
  Check(back.published_ns == dl.published_ns, "published_ns changed");
  Check(back.item_index == dl.item_index, "item_index changed");
  // 0 means "no delay"; the header is written only for a positive time.
  Check(back.not_before_ms == (dl.not_before_ms > 0 ? dl.not_before_ms : 0),
        "not_before_ms changed");
  Check(back.IdempotencyKey() == dl.IdempotencyKey() || back.source_stream != dl.source_stream,
        "idempotency key changed");
  // Encoding is a fixed point after one round.
  Check(evp::EncodeDeadLetterHeaders(back) == encoded, "encoding is not stable");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    Run(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const std::exception& e) {
    evp::fuzz::Fail("exception escaped", e.what());
  }
  return 0;
}
