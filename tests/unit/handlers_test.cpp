// Handlers: event versions (SPEC §11), row changes (SPEC §5, §10) and onboarding (SPEC §6,
// §11); plus the samples eventctl publishes, which must satisfy the published schemas.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "handlers/mutation.hpp"
#include "handlers/samples.hpp"
#include "validation/decoder.hpp"
#include "validation/schema_registry.hpp"

namespace evp::handlers {
namespace {

using nlohmann::json;

// Column name -> text of a mutation, in order.
std::vector<std::string> ColumnNames(const Mutation& m) {
  std::vector<std::string> out;
  for (const auto& v : m.values) out.emplace_back(v.column->name);
  return out;
}

std::map<std::string, std::string> ColumnValues(const Mutation& m) {
  std::map<std::string, std::string> out;
  for (const auto& v : m.values) out[std::string(v.column->name)] = v.text;
  return out;
}

// Position of every column of `m` in the table definition, which must be increasing.
void ExpectTableOrder(const Mutation& m) {
  const TableDef& def = Definition(m.table);
  size_t last = 0;
  bool first = true;
  for (const auto& v : m.values) {
    size_t pos = def.columns.size();
    for (size_t i = 0; i < def.columns.size(); ++i) {
      if (&def.columns[i] == v.column) pos = i;
    }
    ASSERT_LT(pos, def.columns.size()) << v.column->name << " is not a column of " << def.name;
    if (!first) {
      EXPECT_GT(pos, last) << v.column->name << " out of table order";
    }
    last = pos;
    first = false;
  }
}

const Version kRealtimeV{1700000000, Source::kRealtime, 10};
const Version kHistoryV{1700000000, Source::kHistory, 10};

// ---------------------------------------------------------------------------------------------
// Versions

TEST(EventVersion, UsesConversationTimestampForChats) {
  const json doc = {{"chat_id", "c1"}, {"conversation_timestamp", 1700000100}};
  for (EventType t : {EventType::kChatsUpsert, EventType::kChatsUpdate}) {
    Version v = EventVersion(t, doc, 1700000999, Source::kRealtime, 7);
    EXPECT_EQ(v.seconds, 1700000100) << EventTypeName(t);
    EXPECT_EQ(v.source, Source::kRealtime);
    EXPECT_EQ(v.seq, 7u);
  }
}

TEST(EventVersion, UsesMessageTimestampForMessagesUpsert) {
  const json doc = {{"message_id", "m1"}, {"message_timestamp", 1600000000}};
  Version v = EventVersion(EventType::kMessagesUpsert, doc, 1700000999, Source::kHistory, 3);
  EXPECT_EQ(v.seconds, 1600000000);
  EXPECT_EQ(v.source, Source::kHistory);
  EXPECT_EQ(v.seq, 3u);
}

TEST(EventVersion, UsesTimestampForMessagesUpdate) {
  const json doc = {{"message_id", "m1"}, {"timestamp", 1650000000}};
  Version v = EventVersion(EventType::kMessagesUpdate, doc, 1700000999, Source::kRealtime, 9);
  EXPECT_EQ(v.seconds, 1650000000);
  EXPECT_EQ(v.seq, 9u);
}

TEST(EventVersion, FallsBackToPublishTimeWithoutTheExplicitField) {
  const std::vector<std::pair<EventType, json>> cases = {
      {EventType::kChatsUpsert, {{"chat_id", "c1"}}},
      {EventType::kChatsUpdate, {{"chat_id", "c1"}, {"unread_count", 3}}},
      {EventType::kMessagesUpsert, {{"message_id", "m1"}}},
      {EventType::kMessagesUpdate, {{"message_id", "m1"}, {"status", "read"}}},
  };
  for (const auto& [type, doc] : cases) {
    Version v = EventVersion(type, doc, 1700000999, Source::kRealtime, 5);
    EXPECT_EQ(v.seconds, 1700000999) << EventTypeName(type);
    EXPECT_EQ(v.seq, 5u);
  }
}

TEST(EventVersion, UsesPublishTimeForTypesWithoutATimeField) {
  // Fields named like another type's time field do not count.
  const json doc = {{"agent_id", "a1"},
                    {"phone_number", "+1"},
                    {"timestamp", 1},
                    {"message_timestamp", 2},
                    {"conversation_timestamp", 3}};
  for (EventType t :
       {EventType::kContactsUpsert, EventType::kContactsUpdate, EventType::kConnectionUpdate}) {
    Version v = EventVersion(t, doc, 1700000999, Source::kRealtime, 11);
    EXPECT_EQ(v.seconds, 1700000999) << EventTypeName(t);
    EXPECT_EQ(v.seq, 11u);
  }
  EXPECT_EQ(EventVersion(EventType::kChatsUpsert, doc, 1700000999, Source::kRealtime, 1).seconds,
            3);
  EXPECT_EQ(EventVersion(EventType::kMessagesUpsert, doc, 1700000999, Source::kRealtime, 1).seconds,
            2);
  EXPECT_EQ(EventVersion(EventType::kMessagesUpdate, doc, 1700000999, Source::kRealtime, 1).seconds,
            1);
}

TEST(Version, OrdersBySecondsFirst) {
  EXPECT_LT((Version{10, Source::kRealtime, 999}), (Version{11, Source::kHistory, 1}));
  EXPECT_GT((Version{12, Source::kHistory, 1}), (Version{11, Source::kRealtime, 999}));
}

TEST(Version, LetsRealtimeWinATieAgainstHistory) {
  EXPECT_LT((Version{10, Source::kHistory, 999}), (Version{10, Source::kRealtime, 1}));
}

TEST(Version, BreaksRemainingTiesByStreamSequence) {
  EXPECT_LT((Version{10, Source::kRealtime, 1}), (Version{10, Source::kRealtime, 2}));
  EXPECT_LT((Version{10, Source::kHistory, 1}), (Version{10, Source::kHistory, 2}));
  EXPECT_EQ((Version{10, Source::kRealtime, 2}), (Version{10, Source::kRealtime, 2}));
}

// ---------------------------------------------------------------------------------------------
// Mutations

TEST(BuildMutation, PutsKeyColumnsFirstAndTakesCompanyFromTheRoute) {
  const json doc = {{"jid", "j@s"}, {"phone_number", "+1"}, {"chat_id", "c1"}};
  Mutation m = BuildMutation(EventType::kChatsUpsert, doc, "acme", kRealtimeV);
  EXPECT_EQ(m.table, Table::kChats);
  EXPECT_EQ(m.kind, WriteKind::kUpsert);
  EXPECT_EQ(m.company_id, "acme");
  EXPECT_EQ(m.version, kRealtimeV);
  ASSERT_GE(m.values.size(), 2u);
  EXPECT_EQ(m.values[0].column->name, "chat_id");
  EXPECT_EQ(m.values[0].text, "c1");
  EXPECT_EQ(ColumnValues(m).at("company_id"), "acme");
  EXPECT_EQ(m.KeyText(), "chat_id=c1");
  ExpectTableOrder(m);
}

TEST(BuildMutation, PutsBothContactKeyColumnsFirst) {
  const json doc = {{"push_name", "Ann"}, {"phone_number", "+5511"}, {"agent_id", "a1"}};
  for (EventType t : {EventType::kContactsUpsert, EventType::kContactsUpdate}) {
    Mutation m = BuildMutation(t, doc, "acme", kRealtimeV);
    EXPECT_EQ(m.table, Table::kContacts);
    ASSERT_GE(m.values.size(), 2u);
    EXPECT_EQ(m.values[0].column->name, "agent_id");
    EXPECT_EQ(m.values[1].column->name, "phone_number");
    EXPECT_EQ(Definition(Table::kContacts).key_count, 2u);
    EXPECT_EQ(m.KeyText(), "agent_id=a1,phone_number=+5511");
    ExpectTableOrder(m);
  }
}

TEST(BuildMutation, CarriesOnlyTheFieldsPresentInTheEvent) {
  const json doc = {{"chat_id", "c1"}, {"unread_count", 0}};
  Mutation m = BuildMutation(EventType::kChatsUpdate, doc, "acme", kRealtimeV);
  EXPECT_EQ(ColumnNames(m), (std::vector<std::string>{"chat_id", "company_id", "unread_count"}));
  EXPECT_EQ(ColumnValues(m).at("unread_count"), "0");
}

TEST(BuildMutation, RendersEveryColumnTypeAsPostgresText) {
  const json doc = {{"chat_id", "c1"},
                    {"jid", "j@s"},
                    {"phone_number", "+1"},
                    {"is_group", true},
                    {"not_spam", false},
                    {"unread_count", 12},
                    {"conversation_timestamp", 1700000000},
                    {"last_message", {{"text", "hi \"there\""}, {"n", 1}}}};
  Mutation m = BuildMutation(EventType::kChatsUpsert, doc, "acme", kRealtimeV);
  auto v = ColumnValues(m);
  EXPECT_EQ(v.at("is_group"), "true");
  EXPECT_EQ(v.at("not_spam"), "false");
  EXPECT_EQ(v.at("unread_count"), "12");
  EXPECT_EQ(v.at("conversation_timestamp"), "1700000000");
  EXPECT_EQ(json::parse(v.at("last_message")), doc.at("last_message"));
  ExpectTableOrder(m);

  const json contact = {
      {"agent_id", "a1"}, {"phone_number", "+1"}, {"tags", json::array({"vip", "b\"c"})}};
  Mutation c = BuildMutation(EventType::kContactsUpsert, contact, "acme", kRealtimeV);
  EXPECT_EQ(json::parse(ColumnValues(c).at("tags")), contact.at("tags"));
}

TEST(BuildMutation, KeepsTheNumbersOfAFreeFormObjectAsSentWhenGivenTheText) {
  const std::string text =
      R"({"message_id": "m1", "chat_id": "c", "jid": "j", "flow": "OUT", "message_obj": )"
      R"({"big": 123456789012345678901234567890, "prec": 3.141592653589793238462643383279}, )"
      R"("key": {"id": "k", "n": 7}})";
  const json doc = json::parse(text);
  ASSERT_TRUE(NeedsExactText(EventType::kMessagesUpsert, doc));
  Mutation m = BuildMutation(EventType::kMessagesUpsert, doc, "acme", kRealtimeV, text);
  auto v = ColumnValues(m);
  EXPECT_EQ(v.at("message_obj"),
            R"({"big": 123456789012345678901234567890, "prec": 3.141592653589793238462643383279})");
  // Without a number the parser holds as a double, the value is printed from the document.
  EXPECT_EQ(v.at("key"), R"({"id":"k","n":7})");
  // Without the text, the parser's doubles are all there is.
  Mutation lossy = BuildMutation(EventType::kMessagesUpsert, doc, "acme", kRealtimeV);
  EXPECT_NE(ColumnValues(lossy).at("message_obj").find("3.141592653589793"), std::string::npos);
  EXPECT_FALSE(NeedsExactText(EventType::kMessagesUpsert,
                              json{{"message_id", "m1"}, {"message_obj", {{"n", 1}}}}));
}

TEST(BuildMutation, MapsEveryPayloadFieldOfAFullMessageToItsColumn) {
  const json doc = {{"message_id", "m1"},
                    {"chat_id", "c1"},
                    {"jid", "j@s"},
                    {"flow", "OUT"},
                    {"company_id", "acme"},
                    {"agent_id", "a1"},
                    {"from_phone", "+1"},
                    {"to_phone", "+2"},
                    {"message_type", "text"},
                    {"message_text", "hi"},
                    {"message_url", "u"},
                    {"message_obj", {{"x", 1}}},
                    {"key", {{"id", "k"}}},
                    {"status", "delivered"},
                    {"message_timestamp", 1700000000},
                    {"campaign", {{"is_campaign", true}}}};
  Mutation m = BuildMutation(EventType::kMessagesUpsert, doc, "acme", kRealtimeV);
  EXPECT_EQ(m.table, Table::kMessages);
  EXPECT_EQ(m.kind, WriteKind::kUpsert);
  EXPECT_EQ(m.values.size(), doc.size());
  auto v = ColumnValues(m);
  for (const auto& [field, value] : doc.items()) {
    ASSERT_TRUE(v.count(field)) << field;
    if (value.is_string()) {
      EXPECT_EQ(v.at(field), value.get<std::string>()) << field;
    }
  }
  EXPECT_EQ(json::parse(v.at("campaign")), doc.at("campaign"));
  ExpectTableOrder(m);
}

TEST(BuildMutation, DoesNotStoreMessagesUpdateTimestampAsAColumn) {
  const json doc = {{"message_id", "m1"},
                    {"status", "read"},
                    {"is_deleted", true},
                    {"edited_message_obj", {{"text", "edited"}}},
                    {"timestamp", 1700000000}};
  Mutation m = BuildMutation(EventType::kMessagesUpdate, doc, "acme", kRealtimeV);
  EXPECT_EQ(m.table, Table::kMessages);
  EXPECT_EQ(m.kind, WriteKind::kUpdate);
  EXPECT_EQ(ColumnNames(m), (std::vector<std::string>{"message_id", "company_id", "status",
                                                      "is_deleted", "edited_message_obj"}));
  auto v = ColumnValues(m);
  EXPECT_EQ(v.at("is_deleted"), "true");
  EXPECT_EQ(v.count("timestamp"), 0u);
  EXPECT_EQ(v.count("message_timestamp"), 0u);
}

TEST(BuildMutation, MarksUpdateTypesAsUpdatesAndUpsertTypesAsUpserts) {
  const json chat = {{"chat_id", "c1"}, {"jid", "j"}, {"phone_number", "+1"}};
  const json msg = {{"message_id", "m1"}, {"chat_id", "c1"}, {"jid", "j"}, {"flow", "OUT"}};
  const json contact = {{"agent_id", "a1"}, {"phone_number", "+1"}};
  const json agent = {{"agent_id", "a1"}, {"status", "connected"}};
  struct Case {
    EventType type;
    const json& doc;
    Table table;
    WriteKind kind;
  };
  const std::vector<Case> cases = {
      {EventType::kChatsUpsert, chat, Table::kChats, WriteKind::kUpsert},
      {EventType::kChatsUpdate, chat, Table::kChats, WriteKind::kUpdate},
      {EventType::kMessagesUpsert, msg, Table::kMessages, WriteKind::kUpsert},
      {EventType::kMessagesUpdate, msg, Table::kMessages, WriteKind::kUpdate},
      {EventType::kContactsUpsert, contact, Table::kContacts, WriteKind::kUpsert},
      {EventType::kContactsUpdate, contact, Table::kContacts, WriteKind::kUpdate},
      {EventType::kConnectionUpdate, agent, Table::kAgents, WriteKind::kUpsert},
  };
  for (const auto& c : cases) {
    Mutation m = BuildMutation(c.type, c.doc, "acme", kRealtimeV);
    EXPECT_EQ(m.table, c.table) << EventTypeName(c.type);
    EXPECT_EQ(m.kind, c.kind) << EventTypeName(c.type);
  }
}

TEST(BuildMutation, UpsertsAgentsOnConnectionUpdate) {
  const json doc = {{"agent_id", "a1"}, {"status", "connected"}, {"agent_name", "Support"}};
  Mutation m = BuildMutation(EventType::kConnectionUpdate, doc, "acme", kRealtimeV);
  EXPECT_EQ(m.table, Table::kAgents);
  EXPECT_EQ(m.kind, WriteKind::kUpsert);
  EXPECT_EQ(Definition(Table::kAgents).name, "agents");
  EXPECT_EQ(ColumnNames(m),
            (std::vector<std::string>{"agent_id", "company_id", "status", "agent_name"}));
  EXPECT_EQ(m.KeyText(), "agent_id=a1");
}

TEST(BuildMutation, UsesTheFixedTableNames) {
  EXPECT_EQ(Definition(Table::kChats).name, "chats");
  EXPECT_EQ(Definition(Table::kMessages).name, "messages");
  EXPECT_EQ(Definition(Table::kContacts).name, "contacts");
  EXPECT_EQ(Definition(Table::kAgents).name, "agents");
  EXPECT_EQ(Definition(Table::kChats).columns[0].name, "chat_id");
  EXPECT_EQ(Definition(Table::kMessages).columns[0].name, "message_id");
}

TEST(BuildMutation, EveryTableHasACompanyIdColumn) {
  for (Table t : {Table::kChats, Table::kMessages, Table::kContacts, Table::kAgents}) {
    bool found = false;
    for (const auto& c : Definition(t).columns) found = found || c.name == "company_id";
    EXPECT_TRUE(found) << Definition(t).name;
  }
}

// ---------------------------------------------------------------------------------------------
// Onboarding

json InboundMessage() {
  return {{"message_id", "m1"}, {"chat_id", "c1"},       {"jid", "5511@s.whatsapp.net"},
          {"flow", "IN"},       {"agent_id", "agent-1"}, {"from_phone", "+5511999"}};
}

TEST(Onboarding, IsAttachedToRealtimeInboundMessagesWithDefaults) {
  Mutation m = BuildMutation(EventType::kMessagesUpsert, InboundMessage(), "acme", kRealtimeV);
  ASSERT_TRUE(m.onboarding.has_value());
  EXPECT_EQ(m.onboarding->agent_id, "agent-1");
  EXPECT_EQ(m.onboarding->phone_number, "+5511999");
  EXPECT_EQ(m.onboarding->chat_id, "c1");
  EXPECT_EQ(m.onboarding->message_id, "m1");
  EXPECT_EQ(m.onboarding->origin, "DirectChat");
  EXPECT_EQ(m.onboarding->tags, std::vector<std::string>{"Onboarded"});
  EXPECT_EQ(m.onboarding->assigned_to, "");
}

TEST(Onboarding, TakesOriginTagsAndAssigneeFromTheCampaign) {
  json doc = InboundMessage();
  doc["campaign"] = {{"is_campaign", true},
                     {"tags", json::array({"promo", "black-friday"})},
                     {"assigned_to", "bob"},
                     {"origin", "Instagram"}};
  Mutation m = BuildMutation(EventType::kMessagesUpsert, doc, "acme", kRealtimeV);
  ASSERT_TRUE(m.onboarding.has_value());
  EXPECT_EQ(m.onboarding->origin, "Instagram");
  EXPECT_EQ(m.onboarding->tags, (std::vector<std::string>{"promo", "black-friday"}));
  EXPECT_EQ(m.onboarding->assigned_to, "bob");
}

TEST(Onboarding, KeepsDefaultsForCampaignFieldsThatAreAbsent) {
  json doc = InboundMessage();
  doc["campaign"] = {{"is_campaign", true}, {"tags", json::array({"promo"})}};
  Mutation m = BuildMutation(EventType::kMessagesUpsert, doc, "acme", kRealtimeV);
  ASSERT_TRUE(m.onboarding.has_value());
  EXPECT_EQ(m.onboarding->origin, "DirectChat");
  EXPECT_EQ(m.onboarding->tags, std::vector<std::string>{"promo"});
}

TEST(Onboarding, IsNeverAttachedToHistoryItems) {
  Mutation m = BuildMutation(EventType::kMessagesUpsert, InboundMessage(), "acme", kHistoryV);
  EXPECT_FALSE(m.onboarding.has_value());
}

TEST(Onboarding, IsNotAttachedToOutboundMessages) {
  json doc = InboundMessage();
  doc["flow"] = "OUT";
  EXPECT_FALSE(
      BuildMutation(EventType::kMessagesUpsert, doc, "acme", kRealtimeV).onboarding.has_value());
}

TEST(Onboarding, NeedsAnAgentAndASenderPhone) {
  for (const char* missing : {"agent_id", "from_phone"}) {
    json doc = InboundMessage();
    doc.erase(missing);
    EXPECT_FALSE(
        BuildMutation(EventType::kMessagesUpsert, doc, "acme", kRealtimeV).onboarding.has_value())
        << "without " << missing;
    doc = InboundMessage();
    doc[missing] = "";
    EXPECT_FALSE(
        BuildMutation(EventType::kMessagesUpsert, doc, "acme", kRealtimeV).onboarding.has_value())
        << "with empty " << missing;
  }
}

TEST(Onboarding, IsNotAttachedToOtherEventTypes) {
  const json doc = InboundMessage();
  for (EventType t : {EventType::kMessagesUpdate, EventType::kChatsUpsert,
                      EventType::kContactsUpsert, EventType::kConnectionUpdate}) {
    json d = doc;
    d["phone_number"] = "+1";
    EXPECT_FALSE(BuildMutation(t, d, "acme", kRealtimeV).onboarding.has_value())
        << EventTypeName(t);
  }
}

// ---------------------------------------------------------------------------------------------
// Samples (what eventctl publishes)

class Samples : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto r = validation::SchemaRegistry::LoadEmbedded();
    ASSERT_TRUE(r.ok()) << r.error();
    registry_ = new validation::SchemaRegistry(std::move(r).value());
  }
  static void TearDownTestSuite() {
    delete registry_;
    registry_ = nullptr;
  }
  static validation::SchemaRegistry* registry_;
};
validation::SchemaRegistry* Samples::registry_ = nullptr;

constexpr int64_t kNow = 1700000000;

TEST_F(Samples, EverySampleOfEveryTypePassesItsSchema) {
  ASSERT_NE(registry_, nullptr);
  for (EventType type : kAllEventTypes) {
    for (uint64_t seed :
         {0ULL, 1ULL, 2ULL, 3ULL, 17ULL, 4999ULL, 5000ULL, 123456789ULL, 18446744073709551615ULL}) {
      SampleOptions options;
      options.seed = seed;
      options.now_unix = kNow;
      options.history_items = 4;
      const json doc = SamplePayload(type, "acme", options);
      SCOPED_TRACE(std::string(EventTypeName(type)) + " seed " + std::to_string(seed));
      auto failure = validation::ValidateEvent(*registry_, type, doc, kNow);
      EXPECT_FALSE(failure.has_value()) << failure->Reason() << "\n" << doc.dump();
      if (!IsHistory(type)) continue;
      const json& items = doc.at(std::string(HistoryArrayKey(type)));
      ASSERT_EQ(items.size(), 4u);
      for (const json& item : items) {
        auto f = validation::ValidateEvent(*registry_, HistoryItemType(type), item, kNow);
        EXPECT_FALSE(f.has_value()) << f->Reason() << "\n" << item.dump();
      }
    }
  }
}

TEST_F(Samples, EmptyHistorySamplesPassTheirSchema) {
  SampleOptions options;
  options.now_unix = kNow;
  options.history_items = 0;
  for (EventType type :
       {EventType::kHistoryChats, EventType::kHistoryMessages, EventType::kHistoryContacts}) {
    const json doc = SamplePayload(type, "acme", options);
    EXPECT_TRUE(doc.at(std::string(HistoryArrayKey(type))).empty());
    auto f = validation::ValidateEvent(*registry_, type, doc, kNow);
    EXPECT_FALSE(f.has_value()) << f->Reason();
  }
}

TEST_F(Samples, CarryTheRequestedTenant) {
  SampleOptions options;
  options.now_unix = kNow;
  for (EventType type : kAllEventTypes) {
    if (IsHistory(type)) continue;
    const json doc = SamplePayload(type, "Tenant_42", options);
    if (doc.contains("company_id")) {
      EXPECT_EQ(doc.at("company_id"), "Tenant_42");
    }
  }
}

TEST_F(Samples, AreDeterministicForASeed) {
  SampleOptions options;
  options.seed = 77;
  options.now_unix = kNow;
  for (EventType type : kAllEventTypes) {
    EXPECT_EQ(SamplePayload(type, "acme", options), SamplePayload(type, "acme", options));
  }
  SampleOptions other = options;
  other.seed = 78;
  EXPECT_NE(SamplePayload(EventType::kMessagesUpsert, "acme", options),
            SamplePayload(EventType::kMessagesUpsert, "acme", other));
}

TEST_F(Samples, BuildMutationsForEveryRealtimeSample) {
  SampleOptions options;
  options.now_unix = kNow;
  for (EventType type : kAllEventTypes) {
    if (IsHistory(type)) continue;
    const json doc = SamplePayload(type, "acme", options);
    Mutation m = BuildMutation(type, doc, "acme", kRealtimeV);
    EXPECT_FALSE(m.KeyText().empty()) << EventTypeName(type);
    ExpectTableOrder(m);
  }
}

}  // namespace
}  // namespace evp::handlers
