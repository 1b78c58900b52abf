// ArrayElementSpans: the exact text of each history item, whatever the spacing, escapes,
// nesting or key order of the envelope.
#include "validation/json_spans.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace evp::validation {
namespace {

std::vector<std::string> Spans(const std::string& doc, const std::string& key) {
  EXPECT_TRUE(nlohmann::json::accept(doc)) << doc;
  auto spans = ArrayElementSpans(doc, key);
  if (!spans) return {"<none>"};
  return {spans->begin(), spans->end()};
}

TEST(ArrayElementSpans, ReturnsEachElementExactlyAsWritten) {
  const std::string doc =
      "{ \"chats\" :\n [ {\"b\": 1, \"a\" : \"x,]}\"} ,{\"c\":[1,[2,{\"d\":\"\\\"}\"}]]},\t"
      "{} ] }";
  EXPECT_EQ(Spans(doc, "chats"),
            (std::vector<std::string>{"{\"b\": 1, \"a\" : \"x,]}\"}",
                                      "{\"c\":[1,[2,{\"d\":\"\\\"}\"}]]}", "{}"}));
}

TEST(ArrayElementSpans, ScalarsAndAnEmptyArray) {
  EXPECT_EQ(Spans(R"({"messages":[1, -2.5e3 ,true,null,"s"]})", "messages"),
            (std::vector<std::string>{"1", "-2.5e3", "true", "null", "\"s\""}));
  EXPECT_EQ(Spans(R"({"messages": []})", "messages"), std::vector<std::string>{});
}

TEST(ArrayElementSpans, SkipsOtherMembersAndFindsAnEscapedKey) {
  EXPECT_EQ(Spans(R"({"x": {"chats": [9]}, "y": "[", "\u0063hats": [{"k": 1}]})", "chats"),
            (std::vector<std::string>{R"({"k": 1})"}));
}

TEST(ArrayElementSpans, TheLastOfARepeatedKeyWinsAsInTheParsedDocument) {
  const std::string doc = R"({"chats": [1], "chats": [2, 3]})";
  EXPECT_EQ(nlohmann::json::parse(doc).at("chats").size(), 2u);
  EXPECT_EQ(Spans(doc, "chats"), (std::vector<std::string>{"2", "3"}));
}

TEST(ArrayElementSpans, NoSpansWithoutAnArrayUnderTheKey) {
  EXPECT_EQ(Spans(R"({"chats": {"a": 1}})", "chats"), std::vector<std::string>{"<none>"});
  EXPECT_EQ(Spans(R"({"other": [1]})", "chats"), std::vector<std::string>{"<none>"});
  EXPECT_EQ(Spans(R"([{"chats": [1]}])", "chats"), std::vector<std::string>{"<none>"});
  EXPECT_EQ(Spans(R"({})", "chats"), std::vector<std::string>{"<none>"});
  EXPECT_FALSE(ArrayElementSpans(R"({"chats": [1, )", "chats").has_value());
}

TEST(MemberSpan, ReturnsTheValueOfATopLevelMemberExactlyAsWritten) {
  const std::string doc =
      R"({"a": {"message_obj": 1}, "message_obj" : { "n": 0.1000000000000000055, "s": "}" } ,)"
      R"( "z": [1.0]})";
  ASSERT_TRUE(nlohmann::json::accept(doc));
  EXPECT_EQ(MemberSpan(doc, "message_obj").value_or("<none>"),
            R"({ "n": 0.1000000000000000055, "s": "}" })");
  EXPECT_EQ(MemberSpan(doc, "z").value_or("<none>"), "[1.0]");
  EXPECT_EQ(MemberSpan(doc, "n").value_or("<none>"), "<none>");  // nested, not top-level
}

TEST(MemberSpan, TheLastOfARepeatedKeyWinsAndEscapedKeysAreFound) {
  EXPECT_EQ(MemberSpan(R"({"k": 1, "\u006b": 2.50})", "k").value_or("<none>"), "2.50");
  EXPECT_FALSE(MemberSpan(R"([{"k": 1}])", "k").has_value());
  EXPECT_FALSE(MemberSpan(R"({})", "k").has_value());
}

TEST(SalvageArrayElementSpans, SplitsAnEnvelopeTheParserRefusesIntoItsItems) {
  const std::string doc =
      " {\"company_id\" : \"acme\", \"chats\" : [ {\"a\":\"\\ud800\"} ,\n"
      "{\"b\":[1,{\"c\":\"]}\"}]}, 7, \"\xff\" ] }\n";
  auto got = SalvageArrayElementSpans(doc, "chats");
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->elements.size(), 4u);
  EXPECT_EQ(got->elements[0], R"({"a":"\ud800"})");
  EXPECT_EQ(got->elements[1], R"({"b":[1,{"c":"]}"}]})");
  EXPECT_EQ(got->elements[2], "7");
  EXPECT_EQ(got->elements[3], "\"\xff\"");
  ASSERT_TRUE(got->company_id.has_value());
  EXPECT_EQ(*got->company_id, "\"acme\"");
  auto empty = SalvageArrayElementSpans(R"({"chats":[]})", "chats");
  ASSERT_TRUE(empty.has_value());
  EXPECT_TRUE(empty->elements.empty());
  EXPECT_FALSE(empty->company_id.has_value());
}

TEST(SalvageArrayElementSpans, RefusesAnythingButTheEnvelopeShape) {
  for (const char* doc : {R"({"chats":[1],"other":2})", R"({"chats":[1]} x)", R"({"chats":[1])",
                          R"({"chats":[1],"chats":[2]})", R"({"messages":[1]})", R"([1,2])",
                          R"({"chats":[{"a":"unterminated]})", R"({"chats":{"a":1}})", "",
                          R"({"company_id":"a","company_id":"b","chats":[]})"}) {
    EXPECT_FALSE(SalvageArrayElementSpans(doc, "chats").has_value()) << doc;
  }
}

}  // namespace
}  // namespace evp::validation
