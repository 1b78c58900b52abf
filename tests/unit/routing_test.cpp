// Subject -> route (SPEC §3, §4, §11): every subject of the contract, unknown types and the
// tenant rules.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "routing/subject.hpp"

namespace evp::routing {
namespace {

struct SubjectCase {
  std::string subject;
  EventType type;
};

const std::vector<SubjectCase>& AllRoutes() {
  static const std::vector<SubjectCase> kCases = {
      {"v1.chats.upsert.acme", EventType::kChatsUpsert},
      {"v1.chats.update.acme", EventType::kChatsUpdate},
      {"v1.messages.upsert.acme", EventType::kMessagesUpsert},
      {"v1.messages.update.acme", EventType::kMessagesUpdate},
      {"v1.contacts.upsert.acme", EventType::kContactsUpsert},
      {"v1.contacts.update.acme", EventType::kContactsUpdate},
      {"v1.connection.update.acme", EventType::kConnectionUpdate},
      {"v1.history.chats.acme", EventType::kHistoryChats},
      {"v1.history.messages.acme", EventType::kHistoryMessages},
      {"v1.history.contacts.acme", EventType::kHistoryContacts},
  };
  return kCases;
}

TEST(Routing, MapsEveryRealtimeAndHistorySubjectToItsTypeAndTenant) {
  for (const auto& c : AllRoutes()) {
    SCOPED_TRACE(c.subject);
    auto r = ParseSubject(c.subject);
    ASSERT_TRUE(r.ok()) << r.error().failure.Reason();
    EXPECT_EQ(r->type, c.type);
    EXPECT_EQ(r->company_id, "acme");
  }
}

TEST(Routing, CoversEveryEventTypeWithOneSubject) {
  ASSERT_EQ(AllRoutes().size(), kAllEventTypes.size());
  for (EventType t : kAllEventTypes) {
    bool found = false;
    for (const auto& c : AllRoutes()) found = found || c.type == t;
    EXPECT_TRUE(found) << EventTypeName(t);
  }
}

TEST(Routing, SubjectForIsTheInverseOfParseSubject) {
  for (EventType t : kAllEventTypes) {
    const std::string subject = SubjectFor(t, "Tenant_9");
    auto r = ParseSubject(subject);
    ASSERT_TRUE(r.ok()) << subject;
    EXPECT_EQ(r->type, t);
    EXPECT_EQ(r->company_id, "Tenant_9");
  }
  EXPECT_EQ(SubjectFor(EventType::kHistoryMessages, "acme"), "v1.history.messages.acme");
  EXPECT_EQ(SubjectFor(EventType::kConnectionUpdate, "acme"), "v1.connection.update.acme");
}

TEST(Routing, KeepsTheTenantCaseAsPublished) {
  auto r = ParseSubject("v1.chats.upsert.AcMe");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->company_id, "AcMe");
}

TEST(Routing, TreatsUnroutableSubjectsAsUnknownType) {
  const std::vector<std::string> subjects = {
      "v1.chats.delete.acme",         // unknown action
      "v1.connection.upsert.acme",    // action that exists elsewhere
      "v1.history.agents.acme",       // unknown history domain
      "v1.history.chats",             // missing tenant token
      "v1.chats.acme",                // missing action
      "v1.chats.upsert.acme.extra",   // extra token
      "v1.history.chats.acme.extra",  // extra token on history
      "v1.dlq.acme",                  // DLQ subjects are not events
      "v2.chats.upsert.acme",         // other contract version
      "v2.x",
      "v1",
      "",
      "chats.upsert.acme",
  };
  for (const auto& s : subjects) {
    SCOPED_TRACE(s);
    auto r = ParseSubject(s);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().failure.code, ReasonCode::kUnknownType);
    EXPECT_FALSE(r.error().failure.message.empty());
  }
}

TEST(Routing, KeepsTheLastTokenAsRawTenantOfAnUnknownType) {
  auto r = ParseSubject("v1.chats.delete.acme");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().failure.code, ReasonCode::kUnknownType);
  EXPECT_EQ(r.error().raw_tenant, "acme");
  EXPECT_EQ(r.error().failure.Reason().rfind("unknown_type: ", 0), 0u);
}

TEST(Routing, FilesAnUnroutableSubjectUnderItsLastTokenUnlessTooShortToNameATenant) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"v1.chats.upsert.x.acme", "acme"},
      {"v1.history.chats.x.y.acme", "acme"},
      {"v1.chats.acme", "acme"},
      {"v1.chats.upsert", ""},
      {"v1.history.chats", ""},
      {"v1.chats", ""},
      {"v1", ""},
  };
  for (const auto& [subject, tenant] : cases) {
    auto r = ParseSubject(subject);
    ASSERT_FALSE(r.ok()) << subject;
    EXPECT_EQ(r.error().raw_tenant, tenant) << subject;
  }
}

TEST(Routing, RejectsInvalidTenantsAndKeepsTheRawToken) {
  const std::vector<std::string> tenants = {
      "",                        // empty
      "ac me",                   // space
      " acme",                   // leading space
      "*",                       // wildcard
      ">",                       // full wildcard
      "1acme",                   // leading digit
      "_acme",                   // leading underscore
      "acme-corp",               // dash
      "acm\xc3\xa9",             // non-ASCII letter
      std::string(41, 'a'),      // too long
      std::string("ac\0me", 5),  // NUL byte
  };
  for (const auto& t : tenants) {
    const std::string subject = "v1.messages.upsert." + t;
    SCOPED_TRACE(subject);
    auto r = ParseSubject(subject);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().failure.code, ReasonCode::kInvalidTenant);
    EXPECT_EQ(r.error().raw_tenant, t);
    EXPECT_FALSE(r.error().failure.message.empty());
  }
}

TEST(Routing, NamesAnInvalidTenantAsWrittenWithControlsAndBadBytesShownAsQuestionMarks) {
  auto accented = ParseSubject("v1.chats.upsert.acm\xc3\xa9");
  ASSERT_FALSE(accented.ok());
  EXPECT_EQ(accented.error().failure.message,
            "company_id 'acm\xc3\xa9' may only contain letters, digits and '_'");
  auto odd =
      ParseSubject(std::string("v1.chats.upsert.a\x01\xff\xc2\x85"
                               "b",
                               22));
  ASSERT_FALSE(odd.ok());
  EXPECT_EQ(odd.error().failure.message,
            "company_id 'a???b' may only contain letters, digits and '_'");
}

TEST(Routing, RejectsInvalidTenantOnHistorySubjects) {
  auto r = ParseSubject("v1.history.chats.9lives");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().failure.code, ReasonCode::kInvalidTenant);
  EXPECT_EQ(r.error().raw_tenant, "9lives");
}

TEST(Routing, RejectsTenantWithLeadingDigit) { EXPECT_TRUE(TenantIdError("1acme").has_value()); }

TEST(Routing, RejectsTenantOfFortyOneCharacters) {
  EXPECT_TRUE(TenantIdError(std::string(41, 'a')).has_value());
}

TEST(Routing, AcceptsTenantOfFortyCharacters) {
  const std::string id = "A" + std::string(39, '9');
  EXPECT_FALSE(TenantIdError(id).has_value());
  auto r = ParseSubject("v1.chats.upsert." + id);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->company_id, id);
}

TEST(Routing, AcceptsTenantWithUnderscoresAndDigits) {
  for (const char* id : {"a", "Z", "acme_corp", "a_1_b_2", "a__", "Acme2024"}) {
    EXPECT_FALSE(TenantIdError(id).has_value()) << id;
  }
}

TEST(Routing, RejectsTenantsWithDotsOrWildcards) {
  for (const char* id : {"a.b", "a*", "a>", "a b", "", "a\tb"}) {
    EXPECT_TRUE(TenantIdError(id).has_value()) << id;
  }
}

TEST(Routing, NamesTheBadTenantPrintablyInTheMessage) {
  auto err = TenantIdError("bad\x01id!");
  ASSERT_TRUE(err.has_value());
  for (char c : *err) {
    EXPECT_TRUE(static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f)
        << "non-printable byte in: " << *err;
  }
}

TEST(Routing, FindsTheTenantOfAnyFourTokenV1Subject) {
  EXPECT_EQ(SubjectTenant("v1.chats.upsert.acme"), "acme");
  EXPECT_EQ(SubjectTenant("v1.chats.delete.acme"), "acme") << "unroutable, still acme's";
  EXPECT_EQ(SubjectTenant("v1.history.chats.Beta_2"), "Beta_2");
  EXPECT_EQ(SubjectTenant("v1.chats.upsert"), std::nullopt);
  EXPECT_EQ(SubjectTenant("v1.chats.upsert.acme.x"), std::nullopt);
  EXPECT_EQ(SubjectTenant("v1.chats.upsert.1bad"), std::nullopt);
  EXPECT_EQ(SubjectTenant("v2.chats.upsert.acme"), std::nullopt);
}

TEST(Routing, BuildsDlqSubjectForValidTenant) {
  EXPECT_EQ(DlqSubjectFor("acme"), "v1.dlq.acme");
  EXPECT_EQ(DlqSubjectFor("Acme_2"), "v1.dlq.Acme_2");
  // A well-formed id refused as invalid_tenant (a case collision) goes to _invalid too.
  EXPECT_EQ(DlqSubjectFor("acme", true), "v1.dlq._invalid");
}

TEST(Routing, SendsInvalidTenantsToTheInvalidDlqSubject) {
  for (const char* id : {"", "1acme", "*", ">", "a.b", "ac me"}) {
    EXPECT_EQ(DlqSubjectFor(id), "v1.dlq._invalid") << id;
  }
  EXPECT_EQ(DlqSubjectFor(std::string(41, 'a')), "v1.dlq._invalid");
  EXPECT_EQ(std::string("v1.dlq.") + std::string(kInvalidTenantToken), "v1.dlq._invalid");
}

}  // namespace
}  // namespace evp::routing
