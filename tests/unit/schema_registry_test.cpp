// SchemaRegistry against the repository's schemas and fixtures: every valid fixture passes,
// every invalid fixture fails with the message listed in tests/testdata/invalid/expected.tsv,
// and the embedded copy of the schemas behaves exactly like the files on disk.
#include "validation/schema_registry.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/embedded.hpp"
#include "core/event.hpp"
#include "validation/decoder.hpp"

namespace evp::validation {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

const fs::path kSourceDir = EVP_SOURCE_DIR;
const fs::path kSchemaDir = kSourceDir / "schemas";
const fs::path kValidDir = kSourceDir / "tests/testdata/valid";
const fs::path kInvalidDir = kSourceDir / "tests/testdata/invalid";
// Fixture timestamps are around 1.7e9 (Nov 2023); "now" is a little later.
constexpr int64_t kNow = 1'700'000'000 + 3600;
constexpr size_t kMaxEventBytes = 921'600;

std::string ReadBytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream data;
  data << in.rdbuf();
  return data.str();
}

SchemaRegistry LoadOrDie(Result<SchemaRegistry, std::string> result) {
  if (!result) {
    std::fprintf(stderr, "cannot load schemas: %s\n", result.error().c_str());
    std::abort();
  }
  return std::move(result).value();
}

const SchemaRegistry& DirectoryRegistry() {
  static const SchemaRegistry reg = LoadOrDie(SchemaRegistry::LoadFromDirectory(kSchemaDir));
  return reg;
}

const SchemaRegistry& EmbeddedRegistry() {
  static const SchemaRegistry reg = LoadOrDie(SchemaRegistry::LoadEmbedded());
  return reg;
}

EventType TypeOf(const std::string& name) {
  auto type = EventTypeFromName(name);
  if (!type) {
    std::fprintf(stderr, "fixture folder %s names no event type\n", name.c_str());
    std::abort();
  }
  return *type;
}

struct Fixture {
  std::string relative;  // "chats.upsert/minimal.json"
  EventType type;
  fs::path path;
};

std::vector<Fixture> ListFixtures(const fs::path& root) {
  std::vector<Fixture> out;
  if (!fs::is_directory(root)) return out;  // the fixture-count test reports it
  for (const auto& dir : fs::directory_iterator(root)) {
    if (!dir.is_directory()) continue;
    const std::string type_name = dir.path().filename().string();
    for (const auto& file : fs::directory_iterator(dir.path())) {
      if (file.path().extension() != ".json") continue;
      out.push_back(Fixture{type_name + "/" + file.path().filename().string(), TypeOf(type_name),
                            file.path()});
    }
  }
  std::sort(out.begin(), out.end(),
            [](const Fixture& a, const Fixture& b) { return a.relative < b.relative; });
  return out;
}

struct Expectation {
  std::string relative;
  std::string reason;    // "schema_violation", "malformed_json"
  std::string contains;  // substring of the message
};

std::vector<Expectation> LoadExpectations() {
  std::vector<Expectation> out;
  std::istringstream in(ReadBytes(kInvalidDir / "expected.tsv"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t a = line.find('\t');
    const size_t b = line.find('\t', a + 1);
    if (a == std::string::npos || b == std::string::npos) {
      std::fprintf(stderr, "bad expected.tsv line: %s\n", line.c_str());
      std::abort();
    }
    out.push_back(
        Expectation{line.substr(0, a), line.substr(a + 1, b - a - 1), line.substr(b + 1)});
  }
  return out;
}

// Decode + validate, as the pipeline does: std::nullopt when the event is accepted.
std::optional<Failure> Check(const SchemaRegistry& reg, EventType type, std::string_view bytes,
                             int64_t now = kNow) {
  auto doc = DecodeEvent(bytes, kMaxEventBytes);
  if (!doc) return doc.error();
  return ValidateEvent(reg, type, *doc, now);
}

std::string TestName(std::string relative) {
  for (char& c : relative) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return relative;
}

// Items of valid history fixtures that are invalid on purpose (the envelope is still valid).
const std::map<std::pair<std::string, size_t>, std::string> kInvalidHistoryItems = {
    {{"history.messages/two_valid_one_invalid_item.json", 1}, "/jid: required property missing"},
};

// ---------------------------------------------------------------------------------------
// Valid fixtures.

class ValidFixture : public testing::TestWithParam<Fixture> {};

TEST_P(ValidFixture, PassesValidationForItsType) {
  const Fixture& f = GetParam();
  const std::string bytes = ReadBytes(f.path);
  auto failure = Check(DirectoryRegistry(), f.type, bytes);
  EXPECT_FALSE(failure.has_value()) << f.relative << ": " << failure->Reason();

  if (!IsHistory(f.type)) return;
  const Json doc = Json::parse(bytes);
  const Json& items = doc.at(std::string(HistoryArrayKey(f.type)));
  for (size_t i = 0; i < items.size(); ++i) {
    auto item_failure = ValidateEvent(DirectoryRegistry(), HistoryItemType(f.type), items[i], kNow);
    auto known = kInvalidHistoryItems.find({f.relative, i});
    if (known == kInvalidHistoryItems.end()) {
      EXPECT_FALSE(item_failure.has_value())
          << f.relative << " item " << i << ": " << item_failure->Reason();
    } else {
      ASSERT_TRUE(item_failure.has_value()) << f.relative << " item " << i;
      EXPECT_NE(item_failure->message.find(known->second), std::string::npos)
          << item_failure->message;
    }
  }
}

std::string ValidFixtureName(const testing::TestParamInfo<Fixture>& param_info) {
  return TestName(param_info.param.relative);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ValidFixture, testing::ValuesIn(ListFixtures(kValidDir)),
                         ValidFixtureName);

// ---------------------------------------------------------------------------------------
// Invalid fixtures.

class InvalidFixture : public testing::TestWithParam<Expectation> {};

TEST_P(InvalidFixture, FailsWithTheExpectedReasonAndPointer) {
  const Expectation& e = GetParam();
  const fs::path path = kInvalidDir / e.relative;
  ASSERT_TRUE(fs::exists(path)) << path;
  const EventType type = TypeOf(e.relative.substr(0, e.relative.find('/')));
  auto failure = Check(DirectoryRegistry(), type, ReadBytes(path));
  ASSERT_TRUE(failure.has_value()) << e.relative << " was accepted";
  EXPECT_EQ(ReasonCodeName(failure->code), e.reason) << failure->Reason();
  EXPECT_NE(failure->message.find(e.contains), std::string::npos)
      << e.relative << "\n  expected to contain: " << e.contains
      << "\n  actual: " << failure->message;
  EXPECT_LE(failure->message.size(), kMaxMessageBytes);
}

std::string InvalidFixtureName(const testing::TestParamInfo<Expectation>& param_info) {
  return TestName(param_info.param.relative);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, InvalidFixture, testing::ValuesIn(LoadExpectations()),
                         InvalidFixtureName);

TEST(Fixtures, EveryInvalidFixtureHasAnExpectation) {
  std::set<std::string> listed;
  for (const auto& e : LoadExpectations()) {
    EXPECT_TRUE(listed.insert(e.relative).second) << "listed twice: " << e.relative;
  }
  for (const auto& f : ListFixtures(kInvalidDir)) {
    EXPECT_TRUE(listed.contains(f.relative)) << "no line in expected.tsv for " << f.relative;
  }
}

TEST(Fixtures, EveryEventTypeHasMinimalFullAndSeveralInvalidFixtures) {
  std::map<EventType, std::set<std::string>> valid;
  std::map<EventType, int> invalid;
  for (const auto& f : ListFixtures(kValidDir)) valid[f.type].insert(f.path.filename().string());
  for (const auto& f : ListFixtures(kInvalidDir)) ++invalid[f.type];
  for (EventType type : kAllEventTypes) {
    SCOPED_TRACE(std::string(EventTypeName(type)));
    EXPECT_TRUE(valid[type].contains("minimal.json"));
    EXPECT_TRUE(valid[type].contains("full.json"));
    EXPECT_GE(invalid[type], 5);
  }
}

TEST(Fixtures, FullMessagesUpsertCarriesKeyCampaignAndMessageObj) {
  const Json doc = Json::parse(ReadBytes(kValidDir / "messages.upsert/full.json"));
  EXPECT_TRUE(doc.at("key").is_object());
  EXPECT_TRUE(doc.at("campaign").is_object());
  EXPECT_TRUE(doc.at("message_obj").is_object());
}

// ---------------------------------------------------------------------------------------
// Loading.

TEST(SchemaRegistry, LoadsEveryEventTypeFromTheSchemasDirectory) {
  auto reg = SchemaRegistry::LoadFromDirectory(kSchemaDir);
  ASSERT_TRUE(reg.ok()) << reg.error();
  for (EventType type : kAllEventTypes) {
    EXPECT_EQ(reg->SchemaDocument(type).at("title"), EventTypeName(type));
  }
}

TEST(SchemaRegistry, LoadsEveryEventTypeFromTheEmbeddedCopy) {
  auto reg = SchemaRegistry::LoadEmbedded();
  ASSERT_TRUE(reg.ok()) << reg.error();
  for (EventType type : kAllEventTypes) {
    EXPECT_EQ(reg->SchemaDocument(type), DirectoryRegistry().SchemaDocument(type));
  }
}

TEST(SchemaRegistry, EmbedsTheSchemasDirectoryByteForByte) {
  size_t v1_files = 0;
  for (const EmbeddedFile& file : EmbeddedSchemas()) {
    if (file.path.substr(0, 3) != "v1/") continue;
    ++v1_files;
    EXPECT_EQ(file.content, ReadBytes(kSchemaDir / std::string(file.path))) << file.path;
  }
  EXPECT_EQ(v1_files, kAllEventTypes.size());
}

TEST(SchemaRegistry, EmbeddedAndDirectoryRegistriesGiveIdenticalResults) {
  std::vector<Fixture> all = ListFixtures(kValidDir);
  for (auto& f : ListFixtures(kInvalidDir)) all.push_back(std::move(f));
  size_t compared = 0;
  for (const Fixture& f : all) {
    auto doc = DecodeEvent(ReadBytes(f.path), kMaxEventBytes);
    if (!doc) continue;
    for (EventType type : kAllEventTypes) {  // every schema, not only the fixture's own
      EXPECT_EQ(DirectoryRegistry().Validate(type, *doc), EmbeddedRegistry().Validate(type, *doc))
          << f.relative << " as " << EventTypeName(type);
      ++compared;
    }
  }
  EXPECT_GT(compared, 1000u);
}

TEST(SchemaRegistry, ReportsAMissingDirectoryNamingTheFile) {
  auto reg = SchemaRegistry::LoadFromDirectory(kSourceDir / "no-such-dir");
  ASSERT_FALSE(reg.ok());
  EXPECT_NE(reg.error().find("chats.upsert.json"), std::string::npos) << reg.error();
  EXPECT_NE(reg.error().find("cannot open"), std::string::npos) << reg.error();
}

class BrokenSchemaDir : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(testing::TempDir()) /
           ("evp_schemas_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "_" + testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "v1");
    for (const auto& file : fs::directory_iterator(kSchemaDir / "v1")) {
      fs::copy_file(file.path(), dir_ / "v1" / file.path().filename());
    }
  }
  void TearDown() override { fs::remove_all(dir_); }
  void Write(const std::string& name, const std::string& content) {
    std::ofstream(dir_ / "v1" / name, std::ios::binary | std::ios::trunc) << content;
  }
  fs::path dir_;
};

TEST_F(BrokenSchemaDir, LoadsAnIntactCopy) {
  auto reg = SchemaRegistry::LoadFromDirectory(dir_);
  EXPECT_TRUE(reg.ok()) << reg.error();
}

TEST_F(BrokenSchemaDir, ReportsInvalidJsonNamingTheFile) {
  Write("messages.update.json", "{\"type\": ");
  auto reg = SchemaRegistry::LoadFromDirectory(dir_);
  ASSERT_FALSE(reg.ok());
  EXPECT_NE(reg.error().find("messages.update.json: invalid JSON"), std::string::npos)
      << reg.error();
}

TEST_F(BrokenSchemaDir, ReportsAnInvalidSchemaNamingTheFileAndProblem) {
  Write("contacts.update.json",
        R"({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
            "properties": {"x": {"maxLength": "ten"}}})");
  auto reg = SchemaRegistry::LoadFromDirectory(dir_);
  ASSERT_FALSE(reg.ok());
  EXPECT_NE(reg.error().find("contacts.update.json: invalid schema"), std::string::npos)
      << reg.error();
}

TEST_F(BrokenSchemaDir, RejectsASchemaOfAnotherDraft) {
  Write("chats.update.json",
        R"({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"})");
  auto reg = SchemaRegistry::LoadFromDirectory(dir_);
  ASSERT_FALSE(reg.ok());
  EXPECT_NE(reg.error().find("chats.update.json: \"$schema\" must be"), std::string::npos)
      << reg.error();
}

TEST(SchemaRegistry, IsMovable) {
  static_assert(std::is_nothrow_move_constructible_v<SchemaRegistry>);
  static_assert(!std::is_copy_constructible_v<SchemaRegistry>);
  auto loaded = SchemaRegistry::LoadFromDirectory(kSchemaDir);
  ASSERT_TRUE(loaded.ok());
  SchemaRegistry moved = std::move(loaded).value();
  SchemaRegistry assigned = LoadOrDie(SchemaRegistry::LoadEmbedded());
  assigned = std::move(moved);
  EXPECT_EQ(assigned.Validate(EventType::kChatsUpdate, Json::object()),
            "/chat_id: required property missing");
}

// ---------------------------------------------------------------------------------------
// The contract itself.

TEST(SchemaContract, EverySchemaIsStrictDraft07WithAnIdAndDescribedProperties) {
  for (EventType type : kAllEventTypes) {
    const std::string name(EventTypeName(type));
    SCOPED_TRACE(name);
    const Json& s = DirectoryRegistry().SchemaDocument(type);
    EXPECT_EQ(s.at("$schema"), "http://json-schema.org/draft-07/schema#");
    EXPECT_EQ(s.at("$id"), "https://schemas.events-processor.dev/v1/" + name + ".json");
    EXPECT_EQ(s.at("additionalProperties"), false);
    EXPECT_TRUE(s.at("description").is_string());
    ASSERT_TRUE(s.at("properties").contains("company_id"));
    for (const auto& [field, prop] : s.at("properties").items()) {
      EXPECT_TRUE(prop.contains("description")) << field;
      EXPECT_TRUE(prop.contains("type")) << field;
      if (prop.at("type") == "string") {
        EXPECT_TRUE(prop.contains("maxLength") || prop.contains("pattern") || prop.contains("enum"))
            << field << " has no length bound";
      }
    }
    for (const Json& example : s.at("examples")) {
      EXPECT_EQ(DirectoryRegistry().Validate(type, example), std::nullopt);
    }
  }
}

TEST(SchemaContract, IdentifiersAreLimitedTo256CharactersAndTextTo64KiB) {
  for (EventType type : kAllEventTypes) {
    for (const auto& [field, prop] :
         DirectoryRegistry().SchemaDocument(type).at("properties").items()) {
      if (prop.at("type") != "string" || field == "company_id" || prop.contains("enum")) continue;
      const bool identifier = field == "jid" || field == "phone_number" || field.ends_with("_id") ||
                              field.ends_with("_phone");
      EXPECT_EQ(prop.at("maxLength"), identifier ? 256 : 65536)
          << EventTypeName(type) << "/" << field;
    }
  }
}

// A value that satisfies a property schema of ours (enough for required fields).
Json SampleValue(const Json& prop) {
  if (prop.contains("enum")) return prop.at("enum").at(0);
  if (prop.at("type") == "array") return Json::array();
  return "x";
}

TEST(SchemaContract, RejectsNullForEveryField) {
  for (EventType type : kAllEventTypes) {
    const Json& s = DirectoryRegistry().SchemaDocument(type);
    Json minimal = Json::object();
    for (const Json& required : s.at("required")) {
      const std::string name = required.get<std::string>();
      minimal[name] = SampleValue(s.at("properties").at(name));
    }
    EXPECT_EQ(DirectoryRegistry().Validate(type, minimal), std::nullopt) << EventTypeName(type);
    for (const auto& [field, prop] : s.at("properties").items()) {
      Json doc = minimal;
      doc[field] = nullptr;
      auto message = DirectoryRegistry().Validate(type, doc);
      ASSERT_TRUE(message.has_value()) << EventTypeName(type) << "/" << field;
      EXPECT_NE(message->find("/" + field + ": expected "), std::string::npos) << *message;
    }
  }
}

// ---------------------------------------------------------------------------------------
// History envelopes.

TEST(HistoryEnvelope, AcceptsItemsOfAnyShape) {
  const Json doc = Json::parse(
      R"({"chats": [{}, {"anything": [1, {"x": null}]}, {"chat_id": 7}, 42, null, "s", []]})");
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kHistoryChats, doc), std::nullopt);
  EXPECT_EQ(ValidateEvent(DirectoryRegistry(), EventType::kHistoryChats, doc, kNow), std::nullopt);
}

TEST(HistoryEnvelope, AcceptsAnEmptyArray) {
  for (EventType type :
       {EventType::kHistoryChats, EventType::kHistoryMessages, EventType::kHistoryContacts}) {
    Json doc = {{std::string(HistoryArrayKey(type)), Json::array()}, {"company_id", "acme"}};
    EXPECT_EQ(DirectoryRegistry().Validate(type, doc), std::nullopt) << EventTypeName(type);
  }
}

TEST(HistoryEnvelope, RejectsAMissingArray) {
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kHistoryContacts, Json::object()),
            "/contacts: required property missing");
}

TEST(HistoryEnvelope, RejectsExtraTopLevelKeys) {
  const Json doc = Json::parse(R"({"messages": [], "next_page": 2})");
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kHistoryMessages, doc),
            "/next_page: unknown property (additionalProperties is false)");
}

TEST(HistoryEnvelope, RejectsTheArrayOfAnotherHistoryType) {
  const Json doc = Json::parse(R"({"chats": []})");
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kHistoryMessages, doc),
            "/chats: unknown property (additionalProperties is false)");
}

TEST(HistoryEnvelope, ItemsAreValidatedAloneAgainstTheUpsertSchema) {
  const Json doc = Json::parse(R"({"chats": [
      {"chat_id": "c1", "jid": "j1", "phone_number": "1"},
      {"chat_id": "c2", "phone_number": "2"},
      42,
      {"chat_id": "c3", "jid": "j3", "phone_number": "3", "unread_count": -1}]})");
  const auto& reg = DirectoryRegistry();
  ASSERT_EQ(ValidateEvent(reg, EventType::kHistoryChats, doc, kNow), std::nullopt);
  const EventType item_type = HistoryItemType(EventType::kHistoryChats);
  const Json& items = doc.at("chats");
  EXPECT_EQ(reg.Validate(item_type, items[0]), std::nullopt);
  EXPECT_EQ(reg.Validate(item_type, items[1]), "/jid: required property missing");
  EXPECT_EQ(reg.Validate(item_type, items[2]), "(root): expected object, got integer");
  EXPECT_EQ(reg.Validate(item_type, items[3]), "/unread_count: must be >= 0");
}

// ---------------------------------------------------------------------------------------
// Messages.

const Json kChat = {{"chat_id", "c1"}, {"jid", "j1"}, {"phone_number", "5511999990000"}};

Json With(Json doc, const std::string& key, Json value) {
  doc[key] = std::move(value);
  return doc;
}

TEST(SchemaRegistryMessages, NameTheDeepestFailingField) {
  Json doc = {{"message_id", "m1"},
              {"chat_id", "c1"},
              {"flow", "IN"},
              {"key", {{"id", "k"}, {"from_me", "no"}}}};  // jid missing too
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kMessagesUpsert, doc),
            "/key/from_me: expected boolean, got string");
}

TEST(SchemaRegistryMessages, PreferATypeMismatchOverAnEnumMismatch) {
  Json doc = {{"message_id", "m1"}, {"chat_id", "c1"}, {"jid", "j1"}, {"flow", 5}};
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kMessagesUpsert, doc),
            "/flow: expected string, got integer");
}

TEST(SchemaRegistryMessages, AreDeterministic) {
  Json doc = Json::parse(R"({"zeta": 1, "alpha": 2, "unread_count": "x", "is_group": 3})");
  const auto first = DirectoryRegistry().Validate(EventType::kChatsUpsert, doc);
  ASSERT_TRUE(first.has_value());
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(DirectoryRegistry().Validate(EventType::kChatsUpsert, doc), first);
    EXPECT_EQ(EmbeddedRegistry().Validate(EventType::kChatsUpsert, doc), first);
  }
}

TEST(SchemaRegistryMessages, NeverQuotePayloadValues) {
  const std::string secret = "SECRET-CUSTOMER-DATA";
  const std::vector<Json> docs = {
      With(kChat, "chat_id", secret + std::string(300, 'x')),
      With(kChat, "is_group", secret),
      With(kChat, "company_id", secret + "!"),
      With(kChat, "unread_count", secret),
  };
  for (const Json& doc : docs) {
    auto message = DirectoryRegistry().Validate(EventType::kChatsUpsert, doc);
    ASSERT_TRUE(message.has_value()) << doc.dump();
    EXPECT_EQ(message->find(secret), std::string::npos) << *message;
  }
  Json msg = {{"message_id", "m1"}, {"chat_id", "c1"}, {"jid", "j1"}, {"flow", secret}};
  auto message = DirectoryRegistry().Validate(EventType::kMessagesUpsert, msg);
  ASSERT_TRUE(message.has_value());
  EXPECT_EQ(*message, "/flow: must be one of IN, OUT");
}

TEST(SchemaRegistryMessages, ShortenHugeUnknownPropertyNames) {
  const Json doc = With(kChat, std::string(200'000, 'k'), 1);
  auto message = DirectoryRegistry().Validate(EventType::kChatsUpsert, doc);
  ASSERT_TRUE(message.has_value());
  EXPECT_LE(message->size(), kMaxMessageBytes);
  EXPECT_EQ(message->rfind("/kkkk", 0), 0u) << *message;
  EXPECT_NE(message->find("...: unknown property"), std::string::npos) << *message;
}

TEST(SchemaRegistryMessages, EscapeJsonPointerSegments) {
  const Json doc = With(kChat, "a/b~c", 1);
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kChatsUpsert, doc),
            "/a~1b~0c: unknown property (additionalProperties is false)");
}

TEST(SchemaRegistryMessages, ReplaceControlCharactersInPropertyNames) {
  const Json doc = With(kChat, std::string("line\nbreak\0nul", 14), 1);
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kChatsUpsert, doc),
            "/line?break?nul: unknown property (additionalProperties is false)");
}

TEST(SchemaRegistryMessages, RejectIntegersBeyondInt64WithTheUpperBound) {
  // valijson reads integers as int64; 2^64-1 must not pass as -1 nor be called negative.
  const Json doc = Json::parse(R"({"chat_id": "c", "unread_count": 18446744073709551615})");
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kChatsUpdate, doc),
            "/unread_count: must be <= 2147483647");
  const Json ts = Json::parse(R"({"chat_id": "c", "conversation_timestamp": 9223372036854775808})");
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kChatsUpdate, ts),
            "/conversation_timestamp: must be <= 9223372036854775807");
}

TEST(SchemaRegistryMessages, NameArrayIndexes) {
  Json doc = {{"phone_number", "1"}, {"agent_id", "a"}, {"tags", {"ok", "fine", false}}};
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kContactsUpsert, doc),
            "/tags/2: expected string, got boolean");
}

// ---------------------------------------------------------------------------------------
// Rules and robustness.

TEST(SchemaRegistry, CountsStringLengthInCharactersNotBytes) {
  std::string two_byte_chars;
  for (int i = 0; i < 256; ++i) two_byte_chars += "\xC3\xA9";  // é
  EXPECT_EQ(
      DirectoryRegistry().Validate(EventType::kChatsUpsert, With(kChat, "chat_id", two_byte_chars)),
      std::nullopt);
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kChatsUpsert,
                                         With(kChat, "chat_id", two_byte_chars + "e")),
            "/chat_id: must be at most 256 characters");
}

TEST(SchemaRegistry, AcceptsCompanyIdsOfOneToFortyCharacters) {
  for (const std::string& id :
       std::vector<std::string>{"a", "Acme_2", std::string("Z") + std::string(39, '9')}) {
    EXPECT_EQ(DirectoryRegistry().Validate(EventType::kChatsUpsert, With(kChat, "company_id", id)),
              std::nullopt)
        << id;
  }
  for (const std::string& id :
       std::vector<std::string>{"", "_a", "9a", "a-b", "a b", "a.b", "*", ">", "\xC3\xA4", "acme\n",
                                std::string("Z") + std::string(40, '9')}) {
    EXPECT_EQ(DirectoryRegistry().Validate(EventType::kChatsUpsert, With(kChat, "company_id", id)),
              "/company_id: must match ^[A-Za-z][A-Za-z0-9_]{0,39}$")
        << id;
  }
}

TEST(SchemaRegistry, ACheckedTenantSkipsOnlyTheRuleItAlreadyPassed) {
  const SchemaRegistry& reg = DirectoryRegistry();
  EXPECT_EQ(reg.Validate(EventType::kChatsUpsert, With(kChat, "company_id", "acme"), "acme"),
            std::nullopt);
  // A company_id other than the checked tenant is still held to the rule.
  for (const std::string& id : std::vector<std::string>{"", "9a", "a-b", "acme\n", "acme "}) {
    EXPECT_EQ(reg.Validate(EventType::kChatsUpsert, With(kChat, "company_id", id), "acme"),
              "/company_id: must match ^[A-Za-z][A-Za-z0-9_]{0,39}$")
        << id;
  }
  // Other rules still apply, with the same message.
  const Json doc = With(With(kChat, "company_id", "acme"), "unread_count", -1);
  EXPECT_EQ(reg.Validate(EventType::kChatsUpsert, doc, "acme"),
            reg.Validate(EventType::kChatsUpsert, doc));
  ASSERT_NE(reg.Validate(EventType::kChatsUpsert, doc, "acme"), std::nullopt);
}

TEST(SchemaRegistry, ACheckedTenantChangesNoVerdictOfAnyFixture) {
  // Every fixture, valid or not, carrying the checked tenant as its company_id: the same
  // result with and without the tenant marked as checked.
  size_t compared = 0;
  for (const fs::path& dir : {kValidDir, kInvalidDir}) {
    for (const Fixture& f : ListFixtures(dir)) {
      auto doc = Json::parse(ReadBytes(f.path), nullptr, false);
      if (!doc.is_object()) continue;
      doc["company_id"] = "Acme_1";
      EXPECT_EQ(DirectoryRegistry().Validate(f.type, doc, "Acme_1"),
                DirectoryRegistry().Validate(f.type, doc))
          << f.relative;
      ++compared;
    }
  }
  EXPECT_GT(compared, 50u);
}

TEST(SchemaRegistry, RejectsAHugeCompanyIdWithoutBlowingTheRegexStack) {
  const Json doc = With(kChat, "company_id", "a" + std::string(900'000, 'b'));
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kChatsUpsert, doc),
            "/company_id: must match ^[A-Za-z][A-Za-z0-9_]{0,39}$");
}

TEST(SchemaRegistry, AcceptsAnyObjectInsideFreeFormFields) {
  Json doc = {{"chat_id", "c1"},
              {"last_message", {{"deep", {{"er", {1, 2, {{"x", nullptr}}}}}}, {"n", 1.5}}}};
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kChatsUpdate, doc), std::nullopt);
}

TEST(SchemaRegistry, AllowsExtraMembersInsideKeyAndCampaign) {
  Json doc = {{"message_id", "m1"},
              {"chat_id", "c1"},
              {"jid", "j1"},
              {"flow", "OUT"},
              {"key", {{"participant", "p"}, {"whatever", {1, 2}}}},
              {"campaign", {{"utm_source", "ig"}}}};
  EXPECT_EQ(DirectoryRegistry().Validate(EventType::kMessagesUpsert, doc), std::nullopt);
}

TEST(SchemaRegistry, ValidatesConcurrentlyFromManyThreads) {
  const auto& reg = DirectoryRegistry();
  const std::vector<std::pair<Json, std::optional<std::string>>> cases = {
      {kChat, std::nullopt},
      {With(kChat, "company_id", "acme"), std::nullopt},
      {With(kChat, "company_id", "1acme"), "/company_id: must match ^[A-Za-z][A-Za-z0-9_]{0,39}$"},
      {With(kChat, "unread_count", -1), "/unread_count: must be >= 0"},
      {Json::array(), "(root): expected object, got array"},
  };
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  threads.reserve(8);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        const auto& [doc, want] = cases[static_cast<size_t>(i + t) % cases.size()];
        if (reg.Validate(EventType::kChatsUpsert, doc) != want) ++mismatches;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(FormatJsonPointer, RendersRootAndEscapes) {
  EXPECT_EQ(FormatJsonPointer({}), "(root)");
  const std::vector<std::string> path = {"key", "a/b", "~", "0"};
  EXPECT_EQ(FormatJsonPointer(path), "/key/a~1b/~0/0");
}

TEST(FormatJsonPointer, ShortensLongSegmentsAtCharacterBoundaries) {
  std::string name;
  for (int i = 0; i < 40; ++i) name += "\xE2\x82\xAC";  // €, 3 bytes
  const std::vector<std::string> path = {name};
  const std::string out = FormatJsonPointer(path);
  EXPECT_LE(out.size(), 1 + 64u);
  EXPECT_EQ(out.substr(out.size() - 3), "...");
  EXPECT_EQ(out.substr(1, 3), "\xE2\x82\xAC");
  EXPECT_EQ((out.size() - 1 - 3) % 3, 0u) << "split a character";
}

}  // namespace
}  // namespace evp::validation
