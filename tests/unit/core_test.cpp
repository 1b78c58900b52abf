// Core vocabulary: durations, dead letters, text helpers, backoff and event names.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/backoff.hpp"
#include "core/dead_letter.hpp"
#include "core/duration.hpp"
#include "core/event.hpp"
#include "core/signals.hpp"
#include "core/text.hpp"

namespace evp {
namespace {

using std::chrono::milliseconds;

// ---------------------------------------------------------------------------------------------
// Durations

TEST(Duration, ParsesMillisecondsSecondsMinutesAndHours) {
  EXPECT_EQ(ParseDuration("500ms"), milliseconds(500));
  EXPECT_EQ(ParseDuration("6s"), milliseconds(6000));
  EXPECT_EQ(ParseDuration("5m"), milliseconds(300000));
  EXPECT_EQ(ParseDuration("1h"), milliseconds(3600000));
  EXPECT_EQ(ParseDuration("0s"), milliseconds(0));
  EXPECT_EQ(ParseDuration("0"), milliseconds(0));  // zero alone needs no unit
  EXPECT_EQ(ParseDuration("720h"), milliseconds(int64_t{720} * 3600000));
}

TEST(Duration, RejectsMalformedDurations) {
  for (const char* text :
       {"", "6", "s", "ms", "-1s", "1.5s", "6 s", " 6s", "6s ", "6sec", "6S", "1d", "+5s", "5m5s",
        "0x10s", "99999999999999999999h", "9223372036854775807h"}) {
    EXPECT_FALSE(ParseDuration(text).has_value()) << "'" << text << "'";
  }
}

TEST(Duration, FormatsInTheLargestExactUnit) {
  EXPECT_EQ(FormatDuration(milliseconds(500)), "500ms");
  EXPECT_EQ(FormatDuration(milliseconds(6000)), "6s");
  EXPECT_EQ(FormatDuration(milliseconds(300000)), "5m");
  EXPECT_EQ(FormatDuration(milliseconds(7200000)), "2h");
  EXPECT_EQ(FormatDuration(milliseconds(1500)), "1500ms");
  EXPECT_EQ(FormatDuration(milliseconds(90000)), "90s");
  EXPECT_EQ(FormatDuration(milliseconds(0)), "0ms");
}

TEST(Duration, RoundTripsThroughFormatAndParse) {
  for (int64_t ms : {0LL, 1LL, 999LL, 1000LL, 1001LL, 60000LL, 61000LL, 3600000LL, 86400000LL}) {
    auto parsed = ParseDuration(FormatDuration(milliseconds(ms)));
    ASSERT_TRUE(parsed.has_value()) << ms;
    EXPECT_EQ(parsed->count(), ms);
  }
}

// ---------------------------------------------------------------------------------------------
// Dead letters

// Exact bytes of a literal, embedded NULs included.
template <size_t N>
std::string Bytes(const char (&s)[N]) {
  return std::string(s, N - 1);
}

DeadLetter FullLetter() {
  DeadLetter dl;
  dl.original = Bytes("{\"chat_id\":\"c1\"}\xff\xfe\x00\r\n\x01tail");
  dl.source_subject = "v1.history.chats.acme";
  dl.company_id = "acme";
  dl.error_class = ErrorClass::kRetryable;
  dl.reason = "retries_exhausted: failed 20 deliveries";
  dl.attempts = 3;
  dl.first_failed_ms = 1700000000123;
  dl.last_failed_ms = 1700000009876;
  dl.source_stream = "EVENTS_HISTORY";
  dl.stream_seq = 18446744073709551615ULL;
  dl.published_ns = 1699999999123456789;
  dl.not_before_ms = 1700000012345;
  dl.orig_msg_id = "pub-42";
  dl.item_index = 7;
  dl.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
  dl.waiting_for_row = "message_id=m1, remote_jid=j1";
  return dl;
}

TEST(DeadLetter, RoundTripsThroughHeadersAndBody) {
  const DeadLetter dl = FullLetter();
  auto back = DecodeDeadLetter(EncodeDeadLetterHeaders(dl), dl.original);
  ASSERT_TRUE(back.ok()) << back.error();
  EXPECT_EQ(back->original, dl.original);
  EXPECT_EQ(back->source_subject, dl.source_subject);
  EXPECT_EQ(back->company_id, dl.company_id);
  EXPECT_EQ(back->error_class, dl.error_class);
  EXPECT_EQ(back->reason, dl.reason);
  EXPECT_EQ(back->attempts, dl.attempts);
  EXPECT_EQ(back->first_failed_ms, dl.first_failed_ms);
  EXPECT_EQ(back->last_failed_ms, dl.last_failed_ms);
  EXPECT_EQ(back->source_stream, dl.source_stream);
  EXPECT_EQ(back->stream_seq, dl.stream_seq);
  EXPECT_EQ(back->published_ns, dl.published_ns);
  EXPECT_EQ(back->not_before_ms, dl.not_before_ms);
  EXPECT_EQ(back->orig_msg_id, dl.orig_msg_id);
  EXPECT_EQ(back->item_index, dl.item_index);
  EXPECT_EQ(back->trace_id, dl.trace_id);
  EXPECT_EQ(back->waiting_for_row, dl.waiting_for_row);
  EXPECT_EQ(back->IdempotencyKey(), dl.IdempotencyKey());
}

TEST(DeadLetter, KeepsALongInvalidTenantTokenAndItsSubjectWhole) {
  DeadLetter dl = FullLetter();
  dl.company_id = std::string(300, 'b');
  dl.source_subject = "v1.chats.upsert." + dl.company_id;
  auto back = DecodeDeadLetter(EncodeDeadLetterHeaders(dl), dl.original);
  ASSERT_TRUE(back.ok()) << back.error();
  EXPECT_EQ(back->company_id, dl.company_id);
  EXPECT_EQ(back->source_subject, dl.source_subject);
}

TEST(DeadLetter, KeepsExactOriginalBytesIncludingInvalidUtf8AndNul) {
  std::string bytes;
  for (int b = 0; b < 256; ++b) bytes += static_cast<char>(b);
  bytes += std::string("\0\0\xc3\x28\xed\xa0\x80", 7);
  DeadLetter dl = FullLetter();
  dl.original = bytes;
  auto back = DecodeDeadLetter(EncodeDeadLetterHeaders(dl), dl.original);
  ASSERT_TRUE(back.ok()) << back.error();
  ASSERT_EQ(back->original.size(), bytes.size());
  EXPECT_EQ(back->original, bytes);
}

TEST(DeadLetter, RoundTripsWithoutOptionalHeaders) {
  DeadLetter dl = FullLetter();
  dl.item_index.reset();
  dl.orig_msg_id.clear();
  dl.company_id.clear();  // a subject too short to name a tenant
  dl.error_class = ErrorClass::kFatal;
  const HeaderMap headers = EncodeDeadLetterHeaders(dl);
  EXPECT_EQ(headers.count(dlq_headers::kItemIndex), 0u);
  EXPECT_EQ(headers.count(dlq_headers::kOrigMsgId), 0u);
  // No header carries an empty value (NATS clients misread those).
  for (const auto& [name, value] : headers) EXPECT_FALSE(value.empty()) << name;
  auto back = DecodeDeadLetter(headers, dl.original);
  ASSERT_TRUE(back.ok()) << back.error();
  EXPECT_FALSE(back->item_index.has_value());
  EXPECT_EQ(back->orig_msg_id, "");
  EXPECT_EQ(back->company_id, "");
  EXPECT_EQ(back->error_class, ErrorClass::kFatal);
}

TEST(DeadLetter, StripsCrLfAndControlCharactersFromHeaderValues) {
  DeadLetter dl = FullLetter();
  dl.reason = "schema_violation: bad\r\nEvp-Error-Class: retryable\r\n\r\nbody";
  dl.source_subject = "v1.chats.upsert.acme\r\nX: y";
  dl.company_id = std::string("ac\nme\0x", 7);
  dl.orig_msg_id = "id\r\n\t1";
  for (const auto& [name, value] : EncodeDeadLetterHeaders(dl)) {
    for (char c : value) {
      auto u = static_cast<unsigned char>(c);
      EXPECT_FALSE(u < 0x20 || u == 0x7f) << name << " carries control byte " << int{u};
    }
  }
  const HeaderMap headers = EncodeDeadLetterHeaders(dl);
  EXPECT_NE(headers.at(dlq_headers::kReason).find("schema_violation: bad"), std::string::npos);
  EXPECT_EQ(headers.at(dlq_headers::kErrorClass), "retryable");
}

TEST(DeadLetter, ReportsEachMissingRequiredHeaderByName) {
  const DeadLetter dl = FullLetter();
  for (const char* name :
       {dlq_headers::kSourceSubject, dlq_headers::kErrorClass, dlq_headers::kReason,
        dlq_headers::kAttempts, dlq_headers::kSourceStream, dlq_headers::kStreamSeq}) {
    HeaderMap headers = EncodeDeadLetterHeaders(dl);
    headers.erase(name);
    auto r = DecodeDeadLetter(headers, dl.original);
    ASSERT_FALSE(r.ok()) << name;
    EXPECT_NE(r.error().find(name), std::string::npos) << r.error();
  }
}

TEST(DeadLetter, RejectsDecodingWithoutAnyHeaders) {
  auto r = DecodeDeadLetter({}, "{}");
  EXPECT_FALSE(r.ok());
}

TEST(DeadLetter, RejectsBadNumericAndClassHeaders) {
  const DeadLetter dl = FullLetter();
  const std::vector<std::pair<const char*, std::string>> bad = {
      {dlq_headers::kAttempts, "three"},   {dlq_headers::kAttempts, "-1"},
      {dlq_headers::kAttempts, "3 "},      {dlq_headers::kStreamSeq, "x"},
      {dlq_headers::kStreamSeq, "-5"},     {dlq_headers::kErrorClass, "FATAL"},
      {dlq_headers::kErrorClass, "maybe"}, {dlq_headers::kItemIndex, "1a"},
  };
  for (const auto& [name, value] : bad) {
    HeaderMap headers = EncodeDeadLetterHeaders(dl);
    headers[name] = value;
    auto r = DecodeDeadLetter(headers, dl.original);
    EXPECT_FALSE(r.ok()) << name << "=" << value;
  }
}

TEST(DeadLetter, KeysByStreamAndSequence) {
  DeadLetter dl;
  dl.source_stream = "EVENTS_REALTIME";
  dl.stream_seq = 42;
  DeadLetter same = dl;
  same.attempts = 5;
  same.reason = "other: text";
  same.original = "other bytes";
  EXPECT_EQ(same.IdempotencyKey(), dl.IdempotencyKey()) << "one row per event";
  EXPECT_NE(dl.IdempotencyKey().find("EVENTS_REALTIME"), std::string::npos);
  EXPECT_NE(dl.IdempotencyKey().find("42"), std::string::npos);
  DeadLetter other = dl;
  other.stream_seq = 43;
  EXPECT_NE(other.IdempotencyKey(), dl.IdempotencyKey());
  other = dl;
  other.source_stream = "EVENTS_HISTORY";
  EXPECT_NE(other.IdempotencyKey(), dl.IdempotencyKey());
  other = dl;
  other.published_ns = 1;  // the stream was recreated and its sequences restarted
  EXPECT_NE(other.IdempotencyKey(), dl.IdempotencyKey());
}

TEST(DeadLetter, AddsTheItemIndexToTheKeyOfHistoryItems) {
  DeadLetter a;
  a.source_stream = "EVENTS_HISTORY";
  a.stream_seq = 42;
  a.item_index = 1;
  DeadLetter b = a;
  b.item_index = 2;
  DeadLetter whole = a;
  whole.item_index.reset();
  DeadLetter same = a;
  EXPECT_EQ(a.IdempotencyKey(), same.IdempotencyKey());
  EXPECT_NE(a.IdempotencyKey(), b.IdempotencyKey());
  EXPECT_NE(a.IdempotencyKey(), whole.IdempotencyKey());
  // Item 1 of sequence 42 is not item 2 of sequence 4, whatever the separators.
  DeadLetter c = a;
  c.stream_seq = 4;
  c.item_index = 21;
  EXPECT_NE(a.IdempotencyKey(), c.IdempotencyKey());
}

TEST(DeadLetter, KeepsTheKeyButChangesTheDlqMsgIdWithAttempts) {
  DeadLetter a = FullLetter();
  DeadLetter b = a;
  b.attempts = a.attempts + 1;
  b.reason = "something else: changed";
  b.last_failed_ms += 1000;
  EXPECT_EQ(a.IdempotencyKey(), b.IdempotencyKey());
  EXPECT_NE(a.DlqMsgId(), b.DlqMsgId());
  DeadLetter c = a;
  EXPECT_EQ(a.DlqMsgId(), c.DlqMsgId()) << "same event, same attempt: deduplicated";
}

TEST(DeadLetter, ParsesTheReasonCode) {
  DeadLetter dl;
  dl.reason = "not_found_after_grace: chats.update target row (chat_id=c1) missing";
  EXPECT_EQ(dl.Code(), ReasonCode::kNotFoundAfterGrace);
  dl.reason = "schema_violation: /chat_id: required property missing";
  EXPECT_EQ(dl.Code(), ReasonCode::kSchemaViolation);
  dl.reason = "something odd";
  EXPECT_FALSE(dl.Code().has_value());
  dl.reason = "";
  EXPECT_FALSE(dl.Code().has_value());
}

// ---------------------------------------------------------------------------------------------
// Text

const std::string kReplacement = "\xEF\xBF\xBD";

TEST(Text, AcceptsWellFormedUtf8) {
  for (const std::string& s :
       {std::string(""), std::string("plain ascii"), std::string("caf\xc3\xa9"),
        std::string("\xe2\x82\xac"), std::string("\xf0\x9f\x98\x80"),
        std::string("\xf4\x8f\xbf\xbf"), std::string("a\0b", 3)}) {
    EXPECT_TRUE(IsValidUtf8(s)) << HexEncode(s);
  }
}

TEST(Text, RejectsIllFormedUtf8) {
  for (const std::string& s : {
           std::string("\xff"),              // never valid
           std::string("\x80"),              // lone continuation
           std::string("\xc3"),              // truncated 2-byte
           std::string("\xe2\x82"),          // truncated 3-byte
           std::string("\xc0\xaf"),          // overlong '/'
           std::string("\xe0\x80\xaf"),      // overlong 3-byte
           std::string("\xf0\x80\x80\xaf"),  // overlong 4-byte
           std::string("\xed\xa0\x80"),      // surrogate U+D800
           std::string("\xf4\x90\x80\x80"),  // above U+10FFFF
           std::string("\xf8\x88\x80\x80\x80"),
           std::string("ok\xc3\x28"),
       }) {
    EXPECT_FALSE(IsValidUtf8(s)) << HexEncode(s);
  }
}

TEST(Text, SafeUtf8KeepsValidTextUnchanged) {
  const std::string s = "caf\xc3\xa9 \xf0\x9f\x98\x80 \xe2\x82\xac";
  EXPECT_EQ(SafeUtf8(s), s);
}

TEST(Text, SafeUtf8ReplacesInvalidBytesAndNul) {
  EXPECT_EQ(SafeUtf8("a\xff"
                     "b"),
            "a" + kReplacement + "b");
  EXPECT_EQ(SafeUtf8(std::string("a\0b", 3)), "a" + kReplacement + "b");
  EXPECT_EQ(SafeUtf8("\xed\xa0\x80"), kReplacement + kReplacement + kReplacement);
  EXPECT_EQ(SafeUtf8("x\xe2\x82"), "x" + kReplacement + kReplacement);
}

TEST(Text, SafeUtf8AlwaysProducesValidUtf8WithoutNul) {
  std::mt19937_64 rng(20240601);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int round = 0; round < 200; ++round) {
    std::string s;
    for (int i = 0; i < 64; ++i) s += static_cast<char>(byte(rng));
    const std::string out = SafeUtf8(s);
    EXPECT_TRUE(IsValidUtf8(out)) << HexEncode(s);
    EXPECT_EQ(out.find('\0'), std::string::npos) << HexEncode(s);
  }
}

TEST(Text, ShownKeepsCharactersAndCutsAtACharacterBoundary) {
  EXPECT_EQ(Shown("caf\xc3\xa9 \xe2\x82\xac", 80), "caf\xc3\xa9 \xe2\x82\xac");
  EXPECT_EQ(Shown("a\tb\x7f\xc0\xaf"
                  "c",
                  80),
            "a?b???c")
      << "controls and an overlong '/'";
  EXPECT_EQ(Shown("ab\xe2\x82\xac", 3), "ab\xe2\x82\xac") << "the character begun is whole";
  EXPECT_EQ(Shown("abcdef", 3), "abc...");
  EXPECT_EQ(Shown("", 3), "");
}

TEST(Signals, TheDrainGetsWhatTheInFlightBatchLeftOfTheGrace) {
  using std::chrono::milliseconds;
  using std::chrono::seconds;
  const auto t0 = std::chrono::steady_clock::time_point(seconds(1000));
  EXPECT_EQ(GraceLeft(seconds(20), milliseconds(500), std::nullopt, t0), seconds(20))
      << "no signal: all of it";
  EXPECT_EQ(GraceLeft(seconds(20), milliseconds(500), t0, t0 + seconds(5)), seconds(15));
  EXPECT_EQ(GraceLeft(seconds(20), milliseconds(500), t0, t0 + seconds(25)), milliseconds(500))
      << "a batch slower than the grace leaves the floor, so acks still flush";
  EXPECT_EQ(GraceLeft(seconds(0), milliseconds(500), std::nullopt, t0), milliseconds(500));
}

TEST(Text, HexEncodesLowerCase) {
  EXPECT_EQ(HexEncode(std::string("\x00\x0f\xf0\xff", 4)), "000ff0ff");
  EXPECT_EQ(HexEncode("AZ"), "415a");
  EXPECT_EQ(HexEncode(""), "");
}

TEST(Text, HexRoundTripsEveryByte) {
  std::string bytes;
  for (int b = 0; b < 256; ++b) bytes += static_cast<char>(b);
  EXPECT_EQ(HexDecode(HexEncode(bytes)), bytes);
}

TEST(Text, HexDecodesUpperCase) {
  EXPECT_EQ(HexDecode("DEADbeef"), std::string("\xde\xad\xbe\xef"));
}

// ---------------------------------------------------------------------------------------------
// Backoff

TEST(Backoff, StaysWithinHalfAndFullDelayOfEachAttempt) {
  const milliseconds base(100), cap(10000);
  std::mt19937_64 rng(7);
  for (int attempt = 1; attempt <= 6; ++attempt) {
    const int64_t d = 100LL << (attempt - 1);
    for (int i = 0; i < 200; ++i) {
      const auto delay = BackoffDelay(base, cap, attempt, rng).count();
      EXPECT_GE(delay, d / 2) << "attempt " << attempt;
      EXPECT_LE(delay, d) << "attempt " << attempt;
    }
  }
}

TEST(Backoff, GrowsWithTheAttempt) {
  const milliseconds base(100), cap(100000);
  std::mt19937_64 rng(11);
  int64_t prev_max = 0;
  for (int attempt = 1; attempt <= 8; ++attempt) {
    int64_t max_seen = 0;
    int64_t min_seen = INT64_MAX;
    for (int i = 0; i < 200; ++i) {
      const auto delay = BackoffDelay(base, cap, attempt, rng).count();
      max_seen = std::max(max_seen, delay);
      min_seen = std::min(min_seen, delay);
    }
    EXPECT_GE(min_seen, prev_max / 2) << "attempt " << attempt;
    EXPECT_GT(max_seen, prev_max) << "attempt " << attempt;
    prev_max = max_seen;
  }
}

TEST(Backoff, IsCappedEvenForHugeAttempts) {
  const milliseconds base(500), cap(30000);
  std::mt19937_64 rng(3);
  for (int attempt : {7, 8, 20, 30, 64, 1000, INT32_MAX}) {
    for (int i = 0; i < 50; ++i) {
      const auto delay = BackoffDelay(base, cap, attempt, rng);
      EXPECT_LE(delay, cap) << attempt;
      EXPECT_GE(delay, cap / 2) << attempt;
    }
  }
}

TEST(Backoff, UsesTheBaseForTheFirstAttemptAndBelow) {
  const milliseconds base(1000), cap(60000);
  std::mt19937_64 rng(5);
  for (int attempt : {0, 1, -3}) {
    const auto delay = BackoffDelay(base, cap, attempt, rng);
    EXPECT_GE(delay, base / 2);
    EXPECT_LE(delay, base);
  }
}

TEST(Backoff, JittersAcrossTheWholeRange) {
  const milliseconds base(1000), cap(1000);
  std::mt19937_64 rng(99);
  int64_t lo = INT64_MAX, hi = 0;
  for (int i = 0; i < 1000; ++i) {
    const int64_t d = BackoffDelay(base, cap, 1, rng).count();
    lo = std::min(lo, d);
    hi = std::max(hi, d);
  }
  EXPECT_LT(lo, 600);
  EXPECT_GT(hi, 900);
}

TEST(Backoff, IsDeterministicForAGivenSeed) {
  std::mt19937_64 a(12345), b(12345), c(54321);
  std::vector<int64_t> sa, sb, sc;
  for (int attempt = 1; attempt <= 20; ++attempt) {
    sa.push_back(BackoffDelay(milliseconds(250), milliseconds(30000), attempt, a).count());
    sb.push_back(BackoffDelay(milliseconds(250), milliseconds(30000), attempt, b).count());
    sc.push_back(BackoffDelay(milliseconds(250), milliseconds(30000), attempt, c).count());
  }
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
}

TEST(Backoff, NeverReturnsANegativeOrZeroDelayForAPositiveBase) {
  std::mt19937_64 rng(1);
  for (int attempt = 1; attempt < 40; ++attempt) {
    EXPECT_GT(BackoffDelay(milliseconds(2), milliseconds(5), attempt, rng).count(), 0);
  }
  EXPECT_EQ(BackoffDelay(milliseconds(0), milliseconds(0), 1, rng).count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Event vocabulary

TEST(EventNames, RoundTripEveryEventType) {
  for (EventType t : kAllEventTypes) {
    auto back = EventTypeFromName(EventTypeName(t));
    ASSERT_TRUE(back.has_value()) << EventTypeName(t);
    EXPECT_EQ(*back, t);
  }
  EXPECT_EQ(EventTypeName(EventType::kChatsUpsert), "chats.upsert");
  EXPECT_EQ(EventTypeName(EventType::kConnectionUpdate), "connection.update");
  EXPECT_EQ(EventTypeName(EventType::kHistoryContacts), "history.contacts");
  EXPECT_FALSE(EventTypeFromName("chats.delete").has_value());
  EXPECT_FALSE(EventTypeFromName("").has_value());
  EXPECT_FALSE(EventTypeFromName("Chats.Upsert").has_value());
}

TEST(EventNames, RoundTripEveryReasonCode) {
  const std::vector<std::pair<ReasonCode, std::string>> codes = {
      {ReasonCode::kMalformedJson, "malformed_json"},
      {ReasonCode::kSchemaViolation, "schema_violation"},
      {ReasonCode::kInvalidTenant, "invalid_tenant"},
      {ReasonCode::kTenantMismatch, "tenant_mismatch"},
      {ReasonCode::kUnknownType, "unknown_type"},
      {ReasonCode::kTooLarge, "too_large"},
      {ReasonCode::kNotFoundAfterGrace, "not_found_after_grace"},
      {ReasonCode::kConstraintViolation, "constraint_violation"},
      {ReasonCode::kRetriesExhausted, "retries_exhausted"},
  };
  for (const auto& [code, name] : codes) {
    EXPECT_EQ(ReasonCodeName(code), name);
    EXPECT_EQ(ReasonCodeFromName(name), code);
  }
  EXPECT_FALSE(ReasonCodeFromName("bogus").has_value());
}

TEST(EventNames, RoundTripErrorClasses) {
  EXPECT_EQ(ErrorClassName(ErrorClass::kFatal), "fatal");
  EXPECT_EQ(ErrorClassName(ErrorClass::kRetryable), "retryable");
  EXPECT_EQ(ErrorClassFromName("fatal"), ErrorClass::kFatal);
  EXPECT_EQ(ErrorClassFromName("retryable"), ErrorClass::kRetryable);
  EXPECT_FALSE(ErrorClassFromName("transient").has_value());
}

TEST(EventNames, DescribesHistoryTypes) {
  EXPECT_TRUE(IsHistory(EventType::kHistoryChats));
  EXPECT_TRUE(IsHistory(EventType::kHistoryMessages));
  EXPECT_TRUE(IsHistory(EventType::kHistoryContacts));
  EXPECT_FALSE(IsHistory(EventType::kChatsUpsert));
  EXPECT_FALSE(IsHistory(EventType::kConnectionUpdate));
  EXPECT_EQ(HistoryItemType(EventType::kHistoryChats), EventType::kChatsUpsert);
  EXPECT_EQ(HistoryItemType(EventType::kHistoryMessages), EventType::kMessagesUpsert);
  EXPECT_EQ(HistoryItemType(EventType::kHistoryContacts), EventType::kContactsUpsert);
  EXPECT_EQ(HistoryArrayKey(EventType::kHistoryChats), "chats");
  EXPECT_EQ(HistoryArrayKey(EventType::kHistoryMessages), "messages");
  EXPECT_EQ(HistoryArrayKey(EventType::kHistoryContacts), "contacts");
}

TEST(EventNames, FormatsAFailureAsCodeColonMessage) {
  Failure f{ReasonCode::kSchemaViolation, "/chat_id: required property missing"};
  EXPECT_EQ(f.Reason(), "schema_violation: /chat_id: required property missing");
}

TEST(TraceIdOf, TakesTheTraceIdOfAW3cTraceparentHeader) {
  EXPECT_EQ(TraceIdOf({{"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}),
            "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(TraceIdOf({{"X-Trace-Id", "req-42"}}), "req-42");
  EXPECT_EQ(TraceIdOf({{"Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}),
            "4bf92f3577b34da6a3ce929d0e0e4736")
      << "header names are case-insensitive";
  EXPECT_EQ(TraceIdOf({{"x-trace-id", "req-43"}}), "req-43");
  EXPECT_EQ(TraceIdOf({{"Evp-Trace-Id", "abc"}, {"X-Trace-Id", "other"}}), "abc");
  EXPECT_EQ(TraceIdOf({}), "");
}

TEST(TraceIdOf, IgnoresMalformedValues) {
  EXPECT_EQ(TraceIdOf({{"traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}}),
            "");
  EXPECT_EQ(TraceIdOf({{"traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"}}),
            "");
  EXPECT_EQ(TraceIdOf({{"traceparent", "garbage"}}), "");
  EXPECT_EQ(TraceIdOf({{"traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}),
            "")
      << "version ff is invalid";
  EXPECT_EQ(TraceIdOf({{"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"}}),
            "")
      << "all-zero parent id";
  EXPECT_EQ(
      TraceIdOf({{"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"}}),
      "")
      << "version 00 has exactly 55 characters";
  EXPECT_EQ(TraceIdOf({{"X-Trace-Id", "has space"}}), "");
  EXPECT_EQ(TraceIdOf({{"X-Trace-Id", std::string(129, 'a')}}), "");
}

}  // namespace
}  // namespace evp
