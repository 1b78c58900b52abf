#include "core/dead_letter.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace evp {
namespace {

// A subject, and the tenant token in it, are kept whole up to 2 KiB: exhausted_events indexes
// both columns, and a btree entry holds at most about 2.7 KB (a longer value would make
// recording the dead letter fail on every try).
constexpr size_t kSubjectMax = 2048;

std::string Clean(const std::string& s, size_t max_len = kSubjectMax) {
  std::string out;
  out.reserve(std::min(s.size(), max_len));
  for (char c : s) {
    if (out.size() >= max_len) break;
    auto u = static_cast<unsigned char>(c);
    out += (u < 0x20 || u == 0x7f) ? ' ' : c;
  }
  return out;
}

template <typename T>
std::optional<T> ParseNum(const std::string& s) {
  T v{};
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

std::string DeadLetter::IdempotencyKey() const {
  std::string key =
      source_stream + ":" + std::to_string(stream_seq) + ":" + std::to_string(published_ns);
  if (item_index) key += ":" + std::to_string(*item_index);
  return key;
}

std::string DeadLetter::DlqMsgId() const {
  return "dlq:" + IdempotencyKey() + ":a" + std::to_string(attempts);
}

std::optional<ReasonCode> DeadLetter::Code() const {
  auto colon = reason.find(':');
  return ReasonCodeFromName(reason.substr(0, colon));
}

HeaderMap EncodeDeadLetterHeaders(const DeadLetter& dl) {
  namespace h = dlq_headers;
  HeaderMap out;
  out[h::kSourceSubject] = Clean(dl.source_subject);
  // Empty when the subject names no tenant; a missing header decodes as empty.
  if (!dl.company_id.empty()) out[h::kCompanyId] = Clean(dl.company_id);
  out[h::kErrorClass] = std::string(ErrorClassName(dl.error_class));
  out[h::kReason] = Clean(dl.reason);
  out[h::kAttempts] = std::to_string(dl.attempts);
  out[h::kFirstFailedAt] = std::to_string(dl.first_failed_ms);
  out[h::kLastFailedAt] = std::to_string(dl.last_failed_ms);
  out[h::kSourceStream] = Clean(dl.source_stream, 256);
  out[h::kStreamSeq] = std::to_string(dl.stream_seq);
  out[h::kPublishedAt] = std::to_string(dl.published_ns);
  if (!dl.orig_msg_id.empty()) out[h::kOrigMsgId] = Clean(dl.orig_msg_id, 512);
  if (dl.item_index) out[h::kItemIndex] = std::to_string(*dl.item_index);
  if (dl.not_before_ms > 0) out[h::kNotBefore] = std::to_string(dl.not_before_ms);
  if (!dl.trace_id.empty()) out[h::kTraceId] = Clean(dl.trace_id, 128);
  if (!dl.waiting_for_row.empty()) out[h::kWaitingForRow] = Clean(dl.waiting_for_row, 1024);
  return out;
}

std::string TraceIdOf(const HeaderMap& headers) {
  // Header names are case-insensitive (clients differ: traceparent, Traceparent, ...).
  auto find = [&](std::string_view name) -> const std::string* {
    for (const auto& [k, v] : headers) {
      if (k.size() == name.size() &&
          std::equal(k.begin(), k.end(), name.begin(), [](char a, char b) {
            return std::tolower(static_cast<unsigned char>(a)) ==
                   std::tolower(static_cast<unsigned char>(b));
          })) {
        return &v;
      }
    }
    return nullptr;
  };
  auto lower_hex = [](std::string_view s) {
    return std::all_of(s.begin(), s.end(),
                       [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
  };
  auto all_zero = [](std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return c == '0'; });
  };
  if (const std::string* tp = find("traceparent")) {
    // W3C: version "-" trace-id (32 hex) "-" parent-id (16 hex) "-" flags (2 hex); version 00
    // is exactly 55 characters, later versions may append fields; ff is invalid.
    const std::string_view v = *tp;
    if (v.size() >= 55 && v[2] == '-' && v[35] == '-' && v[52] == '-' &&
        lower_hex(v.substr(0, 2)) && v.substr(0, 2) != "ff" &&
        (v.substr(0, 2) != "00" || v.size() == 55)) {
      const std::string_view id = v.substr(3, 32);
      const std::string_view parent = v.substr(36, 16);
      if (lower_hex(id) && lower_hex(parent) && !all_zero(id) && !all_zero(parent)) {
        return std::string(id);
      }
    }
  }
  auto printable = [](std::string_view v) {
    if (v.empty() || v.size() > 128) return false;
    return std::all_of(v.begin(), v.end(), [](char c) { return c > 0x20 && c < 0x7f; });
  };
  for (const char* name : {dlq_headers::kTraceId, "X-Trace-Id"}) {
    if (const std::string* v = find(name); v != nullptr && printable(*v)) return *v;
  }
  return "";
}

Result<DeadLetter, std::string> DecodeDeadLetter(const HeaderMap& headers, std::string body) {
  namespace h = dlq_headers;
  DeadLetter dl;
  dl.original = std::move(body);
  auto get = [&](const char* name) -> std::optional<std::string> {
    auto it = headers.find(name);
    if (it == headers.end()) return std::nullopt;
    return it->second;
  };
  auto need = [&](const char* name) -> Result<std::string, std::string> {
    auto v = get(name);
    if (!v) return Err{std::string("missing header ") + name};
    return *v;
  };
  for (const char* name : {h::kSourceSubject, h::kErrorClass, h::kReason, h::kAttempts,
                           h::kSourceStream, h::kStreamSeq}) {
    if (!get(name)) return Err{std::string("missing header ") + name};
  }
  dl.source_subject = *need(h::kSourceSubject);
  dl.company_id = get(h::kCompanyId).value_or("");
  auto cls = ErrorClassFromName(*need(h::kErrorClass));
  if (!cls) return Err{std::string("bad header ") + h::kErrorClass};
  dl.error_class = *cls;
  dl.reason = *need(h::kReason);
  auto attempts = ParseNum<int>(*need(h::kAttempts));
  if (!attempts || *attempts < 0) return Err{std::string("bad header ") + h::kAttempts};
  dl.attempts = *attempts;
  dl.first_failed_ms = ParseNum<int64_t>(get(h::kFirstFailedAt).value_or("0")).value_or(0);
  dl.last_failed_ms = ParseNum<int64_t>(get(h::kLastFailedAt).value_or("0")).value_or(0);
  dl.source_stream = *need(h::kSourceStream);
  auto seq = ParseNum<uint64_t>(*need(h::kStreamSeq));
  if (!seq) return Err{std::string("bad header ") + h::kStreamSeq};
  dl.stream_seq = *seq;
  dl.published_ns = ParseNum<int64_t>(get(h::kPublishedAt).value_or("0")).value_or(0);
  dl.orig_msg_id = get(h::kOrigMsgId).value_or("");
  dl.not_before_ms = ParseNum<int64_t>(get(h::kNotBefore).value_or("0")).value_or(0);
  dl.trace_id = get(h::kTraceId).value_or("");
  dl.waiting_for_row = get(h::kWaitingForRow).value_or("");
  if (auto idx = get(h::kItemIndex)) {
    auto v = ParseNum<int64_t>(*idx);
    if (!v) return Err{std::string("bad header ") + h::kItemIndex};
    dl.item_index = *v;
  }
  return dl;
}

}  // namespace evp
