// DecodeEvent / ValidateEvent on odd bodies (SPEC §11): sizes, empty and whitespace bodies,
// invalid UTF-8, syntax errors, nesting bombs, non-object roots, future timestamps, large
// and hostile-but-valid payloads.
#include "validation/decoder.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "validation/schema_registry.hpp"
#include "validation/utf8.hpp"

namespace evp::validation {
namespace {

using Json = nlohmann::json;

constexpr size_t kMaxEventBytes = 921'600;  // MAX_EVENT_BYTES default
constexpr int64_t kNow = 1'700'000'000;
constexpr int64_t kHour = 3600;

const SchemaRegistry& Registry() {
  static const SchemaRegistry reg = [] {
    auto loaded = SchemaRegistry::LoadEmbedded();
    if (!loaded) {
      std::fprintf(stderr, "cannot load schemas: %s\n", loaded.error().c_str());
      std::abort();
    }
    return std::move(loaded).value();
  }();
  return reg;
}

// Expects DecodeEvent to fail with `code` and a message containing `part`; returns the message.
std::string ExpectDecodeFailure(std::string_view bytes, ReasonCode code, std::string_view part,
                                size_t max_bytes = kMaxEventBytes) {
  auto result = DecodeEvent(bytes, max_bytes);
  if (result.ok()) {
    ADD_FAILURE() << "decoded: " << result->dump().substr(0, 200);
    return {};
  }
  EXPECT_EQ(result.error().code, code) << result.error().Reason();
  EXPECT_NE(result.error().message.find(part), std::string::npos) << result.error().message;
  return result.error().message;
}

Json MessageEvent() {
  return {{"message_id", "3EB0C431C26A1D2B"},
          {"chat_id", "5511999990000@s.whatsapp.net"},
          {"jid", "5511999990000@s.whatsapp.net"},
          {"flow", "IN"},
          {"agent_id", "agent-1"},
          {"message_timestamp", kNow}};
}

std::optional<Failure> DecodeAndValidate(EventType type, std::string_view bytes,
                                         int64_t now = kNow) {
  auto doc = DecodeEvent(bytes, kMaxEventBytes);
  if (!doc) return doc.error();
  return ValidateEvent(Registry(), type, *doc, now);
}

std::string Nested(size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

// ---------------------------------------------------------------------------------------
// Size.

TEST(Decoder, RejectsAnEventOneByteOverTheLimitAsTooLarge) {
  const std::string body = R"({"chat_id":"c1"})";
  auto result = DecodeEvent(body, body.size() - 1);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, ReasonCode::kTooLarge);
  EXPECT_EQ(result.error().message, "event is 16 bytes, limit is 15");
  EXPECT_EQ(result.error().Reason(), "too_large: event is 16 bytes, limit is 15");
}

TEST(Decoder, AcceptsAnEventOfExactlyTheLimit) {
  const std::string body = R"({"chat_id":"c1"})";
  auto result = DecodeEvent(body, body.size());
  ASSERT_TRUE(result.ok()) << result.error().Reason();
  EXPECT_EQ(result->at("chat_id"), "c1");
}

TEST(Decoder, ChecksTheSizeBeforeAnythingElse) {
  ExpectDecodeFailure(std::string(kMaxEventBytes + 1, '\xFF'), ReasonCode::kTooLarge,
                      "event is 921601 bytes, limit is 921600");
  ExpectDecodeFailure(std::string(kMaxEventBytes + 1, ' '), ReasonCode::kTooLarge, "event is");
}

// ---------------------------------------------------------------------------------------
// Empty, whitespace, UTF-8.

TEST(Decoder, RejectsAnEmptyBodyAsMalformedJson) {
  ExpectDecodeFailure("", ReasonCode::kMalformedJson, "event body is empty");
}

TEST(Decoder, RejectsAWhitespaceOnlyBodyAsMalformedJson) {
  ExpectDecodeFailure(" \t\r\n  ", ReasonCode::kMalformedJson, "only whitespace");
}

TEST(Decoder, RejectsInvalidUtf8InsideAStringAsMalformedJson) {
  const std::string body = "{\"chat_id\":\"caf\xE9\"}";  // Latin-1 é
  ExpectDecodeFailure(body, ReasonCode::kMalformedJson, "invalid UTF-8 at byte offset 15");
}

TEST(Decoder, RejectsInvalidUtf8OutsideStringsAsMalformedJson) {
  ExpectDecodeFailure("\xFF{\"chat_id\":\"c1\"}", ReasonCode::kMalformedJson,
                      "invalid UTF-8 at byte offset 0");
  ExpectDecodeFailure("{\"chat_id\":\"c1\"}\xC3", ReasonCode::kMalformedJson,
                      "invalid UTF-8 at byte offset 16");
}

// The parser stops at a NUL byte as at the end of its input, so whatever follows one would be
// dropped without a trace while the part before it was applied.
TEST(Decoder, RejectsARawNulByteAnywhereAsMalformedJson) {
  using namespace std::string_literals;
  const std::string chat = R"({"chat_id":"r1","jid":"j","phone_number":"p"})";
  ExpectDecodeFailure(chat + "\0"s + R"({"chat_id":"r2"})", ReasonCode::kMalformedJson,
                      "NUL byte at byte offset 45");
  ExpectDecodeFailure(chat + "\0"s, ReasonCode::kMalformedJson, "NUL byte at byte offset 45");
  ExpectDecodeFailure(chat + "\n\0junk"s, ReasonCode::kMalformedJson, "NUL byte at byte offset 46");
  ExpectDecodeFailure("\0"s + chat, ReasonCode::kMalformedJson, "NUL byte at byte offset 0");
  ExpectDecodeFailure(R"({"chat_id":")"s + "\0"s + R"("})", ReasonCode::kMalformedJson,
                      "NUL byte at byte offset 12");
}

TEST(Decoder, RejectsOverlongSurrogateAndOutOfRangeUtf8) {
  for (const std::string& bad : {
           std::string("\xC0\xAF"),          // overlong '/'
           std::string("\xE0\x80\xAF"),      // overlong '/'
           std::string("\xED\xA0\x80"),      // UTF-16 surrogate U+D800
           std::string("\xF4\x90\x80\x80"),  // U+110000
           std::string("\xF8\x88\x80\x80\x80"),
           std::string("\x80"),      // lone continuation byte
           std::string("\xE2\x82"),  // truncated €
       }) {
    ExpectDecodeFailure(R"({"a":")" + bad + "\"}", ReasonCode::kMalformedJson,
                        "invalid UTF-8 at byte offset 6");
  }
}

TEST(Decoder, AcceptsWellFormedUtf8FromEveryPlane) {
  const std::string body = "{\"t\":\"A \xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF\"}";
  auto result = DecodeEvent(body, kMaxEventBytes);
  ASSERT_TRUE(result.ok()) << result.error().Reason();
  EXPECT_EQ(FindInvalidUtf8(result->at("t").get<std::string>()), std::nullopt);
}

TEST(Decoder, IgnoresALeadingByteOrderMark) {  // RFC 8259 §8.1 lets parsers ignore it
  auto result = DecodeEvent("\xEF\xBB\xBF{\"chat_id\":\"c1\"}", kMaxEventBytes);
  ASSERT_TRUE(result.ok()) << result.error().Reason();
  EXPECT_EQ(result->at("chat_id"), "c1");
}

TEST(Decoder, RejectsEscapedLoneSurrogatesAsMalformedJson) {
  ExpectDecodeFailure(R"({"a":"\ud800"})", ReasonCode::kMalformedJson, "invalid JSON");
}

// ---------------------------------------------------------------------------------------
// Syntax.

TEST(Decoder, RejectsTruncatedJsonWithAByteOffsetAndNoExcerpt) {
  const std::string message = ExpectDecodeFailure(
      R"({"chat_id": "SECRET-VALUE)", ReasonCode::kMalformedJson, "invalid JSON at byte offset");
  EXPECT_EQ(message.find("SECRET"), std::string::npos) << message;
}

TEST(Decoder, ReportsTheByteOffsetOfASyntaxError) {
  const std::string message =
      ExpectDecodeFailure(R"({"a":})", ReasonCode::kMalformedJson, "invalid JSON at byte offset 5");
  EXPECT_NE(message.find("syntax error"), std::string::npos) << message;
}

TEST(Decoder, NeverQuotesThePayloadInSyntaxErrors) {
  for (const std::string& body : {
           std::string(R"({"a": tru-SECRET})"),
           std::string(R"({"a": "SECRET)") + "\n" + R"("})",  // raw control character
           std::string(R"({"a": 1} SECRET)"),
           std::string(R"({"a": -SECRET})"),
           std::string(R"({SECRET: 1})"),
       }) {
    const std::string message =
        ExpectDecodeFailure(body, ReasonCode::kMalformedJson, "invalid JSON at byte offset");
    EXPECT_EQ(message.find("SECRET"), std::string::npos) << message;
    EXPECT_LE(message.size(), 250u) << message;
  }
}

TEST(Decoder, RejectsTrailingGarbageAndConcatenatedDocuments) {
  ExpectDecodeFailure(R"({"a":1}{"b":2})", ReasonCode::kMalformedJson, "invalid JSON");
  ExpectDecodeFailure(R"({"a":1},)", ReasonCode::kMalformedJson, "invalid JSON");
}

TEST(Decoder, RejectsNumbersOutOfRange) {
  ExpectDecodeFailure(R"({"message_timestamp": 1e400})", ReasonCode::kMalformedJson,
                      "number out of range");
}

TEST(Decoder, RejectsCommentsAndSingleQuotes) {
  ExpectDecodeFailure("{\"a\":1 /* c */}", ReasonCode::kMalformedJson, "invalid JSON");
  ExpectDecodeFailure("{'a':1}", ReasonCode::kMalformedJson, "invalid JSON");
}

// ---------------------------------------------------------------------------------------
// Non-object roots.

TEST(Decoder, DecodesNullArrayAndNumberButValidationRejectsThemAtTheRoot) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"null", "(root): expected object, got null"},
      {"[]", "(root): expected object, got array"},
      {"42", "(root): expected object, got integer"},
      {" \"text\" ", "(root): expected object, got string"},
      {"true", "(root): expected object, got boolean"},
  };
  for (const auto& [body, want] : cases) {
    auto doc = DecodeEvent(body, kMaxEventBytes);
    ASSERT_TRUE(doc.ok()) << body << ": " << doc.error().Reason();
    for (EventType type : kAllEventTypes) {
      auto failure = ValidateEvent(Registry(), type, *doc, kNow);
      ASSERT_TRUE(failure.has_value()) << body;
      EXPECT_EQ(failure->code, ReasonCode::kSchemaViolation);
      EXPECT_EQ(failure->message, want);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Nesting.

TEST(Decoder, RejectsADeepNestingAttackAsMalformedJsonWithoutCrashing) {
  ExpectDecodeFailure(std::string(900'000, '['), ReasonCode::kMalformedJson,
                      "nested deeper than 1000 levels at byte offset 1000");
  std::string objects;
  for (int i = 0; i < 100'000; ++i) objects += "{\"a\":";
  ExpectDecodeFailure(objects, ReasonCode::kMalformedJson, "nested deeper than 1000 levels");
  ExpectDecodeFailure(Nested(400'000), ReasonCode::kMalformedJson, "nested deeper than 1000");
}

TEST(Decoder, AcceptsNestingOfExactly1000Levels) {
  EXPECT_TRUE(DecodeEvent(Nested(kMaxJsonDepth), kMaxEventBytes).ok());
  ExpectDecodeFailure(Nested(kMaxJsonDepth + 1), ReasonCode::kMalformedJson, "nested deeper");

  // An event is level 1, so its free-form objects may nest 999 levels.
  Json event = MessageEvent();
  Json obj = Json::object();
  for (size_t i = 2; i < kMaxJsonDepth; ++i) obj = Json{{"n", obj}};
  event["message_obj"] = obj;
  EXPECT_EQ(DecodeAndValidate(EventType::kMessagesUpsert, event.dump()), std::nullopt);
  event["message_obj"] = Json{{"n", obj}};
  auto failure = DecodeAndValidate(EventType::kMessagesUpsert, event.dump());
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(failure->code, ReasonCode::kMalformedJson);
}

TEST(Decoder, IgnoresBracketsInsideStringsWhenMeasuringDepth) {
  Json event = MessageEvent();
  event["message_text"] = std::string(1000, '[') + "\\\"{{{" + std::string(1000, '{');
  auto failure = DecodeAndValidate(EventType::kMessagesUpsert, event.dump());
  EXPECT_EQ(failure, std::nullopt) << failure->Reason();
}

// ---------------------------------------------------------------------------------------
// Timestamps.

TEST(ValidateEvent, RejectsATimestampMoreThan24hInTheFuture) {
  Json event = MessageEvent();
  event["message_timestamp"] = kNow + 24 * kHour + 1;
  auto failure = ValidateEvent(Registry(), EventType::kMessagesUpsert, event, kNow);
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(failure->code, ReasonCode::kSchemaViolation);
  EXPECT_EQ(failure->Reason(), "schema_violation: /message_timestamp: more than 24h in the future");
}

TEST(ValidateEvent, AcceptsTimestampsUpTo24hInTheFuture) {
  Json event = MessageEvent();
  for (int64_t ahead : {int64_t{0}, 23 * kHour, 24 * kHour}) {
    event["message_timestamp"] = kNow + ahead;
    EXPECT_EQ(ValidateEvent(Registry(), EventType::kMessagesUpsert, event, kNow), std::nullopt)
        << ahead;
  }
  event["message_timestamp"] = 0;  // the past is fine, however far
  EXPECT_EQ(ValidateEvent(Registry(), EventType::kMessagesUpsert, event, kNow), std::nullopt);
}

TEST(ValidateEvent, ChecksEveryTimestampField) {
  const std::vector<std::tuple<EventType, Json, std::string>> cases = {
      {EventType::kChatsUpsert,
       {{"chat_id", "c"}, {"jid", "j"}, {"phone_number", "1"}, {"conversation_timestamp", 0}},
       "conversation_timestamp"},
      {EventType::kChatsUpdate,
       {{"chat_id", "c"}, {"conversation_timestamp", 0}},
       "conversation_timestamp"},
      {EventType::kMessagesUpsert, MessageEvent(), "message_timestamp"},
      {EventType::kMessagesUpdate, {{"message_id", "m"}, {"timestamp", 0}}, "timestamp"},
  };
  for (auto [type, event, field] : cases) {
    event[field] = kNow + 25 * kHour;
    auto failure = ValidateEvent(Registry(), type, event, kNow);
    ASSERT_TRUE(failure.has_value()) << EventTypeName(type);
    EXPECT_EQ(failure->message, "/" + field + ": more than 24h in the future");
  }
}

TEST(ValidateEvent, RejectsTimestampsBeyondInt64) {
  auto doc = DecodeEvent(R"({"message_id":"m","timestamp":18446744073709551615})", kMaxEventBytes);
  ASSERT_TRUE(doc.ok());
  auto failure = ValidateEvent(Registry(), EventType::kMessagesUpdate, *doc, kNow);
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(failure->message, "/timestamp: must be <= 9223372036854775807");
  // A clock at the end of time does not overflow.
  EXPECT_EQ(ValidateEvent(Registry(), EventType::kMessagesUpdate,
                          Json{{"message_id", "m"}, {"timestamp", kNow}},
                          std::numeric_limits<int64_t>::max()),
            std::nullopt);
}

// ---------------------------------------------------------------------------------------
// Big and hostile-but-valid payloads.

TEST(ValidateEvent, Accepts600KiBMessagesWithTheBulkInMessageObj) {
  Json event = MessageEvent();
  event["message_text"] = std::string(65'536, 't');  // the text limit, exactly
  event["message_obj"] = {{"imageMessage", {{"jpegThumbnail", std::string(600 * 1024, 'A')}}}};
  const std::string body = event.dump();
  ASSERT_GT(body.size(), 600u * 1024);
  ASSERT_LE(body.size(), kMaxEventBytes);
  EXPECT_EQ(DecodeAndValidate(EventType::kMessagesUpsert, body), std::nullopt);
}

TEST(ValidateEvent, RejectsMessageTextOver64KiB) {
  Json event = MessageEvent();
  event["message_text"] = std::string(65'537, 't');
  auto failure = DecodeAndValidate(EventType::kMessagesUpsert, event.dump());
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(failure->message, "/message_text: must be at most 65536 characters");
}

TEST(ValidateEvent, AcceptsInjectionStringsAsData) {
  Json event = MessageEvent();
  event["message_id"] = "'; DROP TABLE chats; --";
  event["chat_id"] = R"({"$ne":1})";
  event["jid"] = "\" OR 1=1 --";
  event["agent_id"] = "$(reboot)`id`";
  event["message_text"] = "Robert'); DROP TABLE students;-- \xF0\x9F\x92\xA3 <script>x</script>";
  event["message_obj"] = Json::parse(R"({"$ne": 1, "$where": "1", "__proto__": {"x": 1}})");
  event["company_id"] = "acme";
  auto failure = DecodeAndValidate(EventType::kMessagesUpsert, event.dump());
  EXPECT_EQ(failure, std::nullopt) << failure->Reason();
}

TEST(ValidateEvent, RejectsNulCharactersAnywhereNamingTheField) {
  Json event = MessageEvent();
  event["message_obj"] = {{"a", {{"b", {"ok", std::string("x\0y", 3)}}}}};
  auto failure = DecodeAndValidate(EventType::kMessagesUpsert, event.dump());
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(failure->code, ReasonCode::kSchemaViolation);
  EXPECT_EQ(failure->message, "/message_obj/a/b/1: contains U+0000, which cannot be stored");

  event = MessageEvent();
  event["message_obj"] = {{std::string("k\0", 2), 1}};
  failure = DecodeAndValidate(EventType::kMessagesUpsert, event.dump());
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(failure->message, "/message_obj/k?: contains U+0000, which cannot be stored");
}

TEST(ValidateEvent, LeavesHistoryItemsToTheirOwnValidation) {
  Json item = MessageEvent();
  item["message_text"] = std::string("a\0b", 3);
  item["message_timestamp"] = kNow + 48 * kHour;
  const Json batch = {{"messages", {MessageEvent(), item}}};
  EXPECT_EQ(ValidateEvent(Registry(), EventType::kHistoryMessages, batch, kNow), std::nullopt);
  EXPECT_EQ(ValidateEvent(Registry(), EventType::kMessagesUpsert, batch["messages"][0], kNow),
            std::nullopt);
  auto failure = ValidateEvent(Registry(), EventType::kMessagesUpsert, batch["messages"][1], kNow);
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(failure->code, ReasonCode::kSchemaViolation);
}

TEST(ValidateEvent, ReportsSchemaViolationsWithTheMachineCode) {
  auto failure = DecodeAndValidate(EventType::kChatsUpdate, R"({"unread_count": 1})");
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(failure->Reason(), "schema_violation: /chat_id: required property missing");
}

// ---------------------------------------------------------------------------------------
// UTF-8 helpers.

TEST(Utf8, FindsTheFirstInvalidByteAtAnyOffset) {
  for (size_t offset = 0; offset < 24; ++offset) {
    const std::string prefix(offset, 'a');
    EXPECT_EQ(FindInvalidUtf8(prefix + "\xFF" + std::string(12, 'b')), offset);
    EXPECT_EQ(FindInvalidUtf8(prefix + "\xE2\x82\xAC" + std::string(12, 'b')), std::nullopt);
    EXPECT_EQ(FindInvalidUtf8(prefix + "\xE2\x82"), offset);  // cut at the end
  }
}

TEST(Utf8, SanitizeKeepsShortTextAndCutsLongTextAtCharacterBoundaries) {
  EXPECT_EQ(SanitizeUtf8("hello", 10), "hello");
  EXPECT_EQ(SanitizeUtf8("0123456789", 10), "0123456789");
  EXPECT_EQ(SanitizeUtf8("0123456789A", 10), "0123456...");
  EXPECT_EQ(SanitizeUtf8("ab\xE2\x82\xAC\xE2\x82\xAC", 8), "ab\xE2\x82\xAC\xE2\x82\xAC");
  EXPECT_EQ(SanitizeUtf8("ab\xE2\x82\xAC\xE2\x82\xAC", 7), "ab...");
  EXPECT_EQ(SanitizeUtf8(std::string("a\0b\n\xFF", 5), 10), "a?b??");
}

}  // namespace
}  // namespace evp::validation
