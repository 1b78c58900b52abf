#pragma once
// The contract of pipeline::EventStore (pipeline/ports.hpp), written once and run on every
// implementation: the in-memory fake of the unit tests (unit/store_contract_test.cpp) and the
// PostgreSQL writer pool (integration/store_contract_test.cpp). The pipeline's unit tests
// trust the fake; this suite is what keeps the fake honest.
//
// Include it in exactly one file of a test binary, then instantiate it with a harness:
//
//   INSTANTIATE_TYPED_TEST_SUITE_P(StoreContractInMemory, EventStoreContract,
//   ::testing::Types<MyHarness>);
//
// A harness is default-constructible and has:
//   pipeline::EventStore& Store();
//   std::string NewTenant(const std::string& stem);  // a tenant id no other test uses
//   // Text of `column` in the row of `table` whose key reads `key` (Mutation::KeyText(),
//   // e.g. "message_id=m1"), or nullopt when there is no such row or the column is NULL.
//   // Arrays (`tags`) read as JSON: ["a","b"].
//   std::optional<std::string> Text(const std::string& tenant, handlers::Table table,
//                                   const std::string& key, const std::string& column);
//   size_t OnboardingLogRows(const std::string& tenant);
//   // From now on, writing message `message_id` of `tenant` fails as a constraint violation.
//   void RefuseMessage(const std::string& tenant, const std::string& message_id);
#include <gtest/gtest.h>

#include <cctype>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "handlers/mutation.hpp"
#include "pipeline/ports.hpp"

namespace evp::testing {

namespace contract {

inline Version RealtimeAt(int64_t seconds, uint64_t seq) {
  return Version{seconds, Source::kRealtime, seq};
}

inline handlers::Mutation Build(EventType type, const nlohmann::json& doc,
                                const std::string& tenant, const Version& version) {
  return handlers::BuildMutation(type, doc, tenant, version);
}

// An outbound message (no onboarding) with `text`, versioned by its message_timestamp; a
// history item when `source` says so.
inline handlers::Mutation Message(const std::string& tenant, const std::string& id,
                                  const std::string& text, int64_t ts, uint64_t seq,
                                  Source source = Source::kRealtime) {
  return Build(EventType::kMessagesUpsert,
               {{"message_id", id},
                {"chat_id", "c1"},
                {"jid", "j1"},
                {"flow", "OUT"},
                {"status", "sent"},
                {"message_text", text},
                {"message_timestamp", ts}},
               tenant, Version{ts, source, seq});
}

inline handlers::Mutation InboundMessage(const std::string& tenant, const std::string& id,
                                         const std::string& phone, int64_t ts, uint64_t seq) {
  return Build(EventType::kMessagesUpsert,
               {{"message_id", id},
                {"chat_id", "c-" + phone},
                {"jid", "j1"},
                {"flow", "IN"},
                {"agent_id", "a1"},
                {"from_phone", phone},
                {"message_timestamp", ts}},
               tenant, RealtimeAt(ts, seq));
}

inline handlers::Mutation StatusUpdate(const std::string& tenant, const std::string& id,
                                       const std::string& status, int64_t ts, uint64_t seq) {
  return Build(EventType::kMessagesUpdate,
               {{"message_id", id}, {"status", status}, {"timestamp", ts}}, tenant,
               RealtimeAt(ts, seq));
}

inline handlers::Mutation Contact(const std::string& tenant, const std::string& phone,
                                  const std::string& push_name, int64_t ts, uint64_t seq) {
  return Build(EventType::kContactsUpsert,
               {{"agent_id", "a1"}, {"phone_number", phone}, {"push_name", push_name}}, tenant,
               RealtimeAt(ts, seq));
}

inline std::string MessageKey(const std::string& id) { return "message_id=" + id; }
inline std::string ContactKey(const std::string& phone) {
  return "agent_id=a1,phone_number=" + phone;
}

inline bool AppliedOrStale(pipeline::ApplyOutcome o) {
  return o == pipeline::ApplyOutcome::kApplied || o == pipeline::ApplyOutcome::kStale;
}

}  // namespace contract

template <typename Harness>
class EventStoreContract : public ::testing::Test {
 protected:
  // A tenant whose schema exists.
  std::string ReadyTenant(const std::string& stem) {
    std::string t = h_.NewTenant(stem);
    auto r = h_.Store().EnsureTenant(t);
    EXPECT_TRUE(r.ok()) << t << ": " << (r.ok() ? "" : r.error().message);
    return t;
  }
  // Applies the mutations and returns their outcomes, one per mutation, in order.
  std::vector<pipeline::ApplyOutcome> Apply(std::vector<handlers::Mutation> mutations) {
    const size_t n = mutations.size();
    auto r = h_.Store().Apply(std::move(mutations));
    std::vector<pipeline::ApplyOutcome> out;
    if (!r.ok()) {
      ADD_FAILURE() << "Apply failed: " << r.error().message;
      return out;
    }
    EXPECT_EQ(r.value().size(), n) << "one result per mutation";
    out.reserve(r.value().size());
    for (const auto& result : r.value()) out.push_back(result.outcome);
    return out;
  }
  std::optional<std::string> Text(const std::string& tenant, handlers::Table table,
                                  const std::string& key, const std::string& column) {
    return h_.Text(tenant, table, key, column);
  }

  Harness h_;
};

TYPED_TEST_SUITE_P(EventStoreContract);

using pipeline::ApplyOutcome;
using Table = handlers::Table;

TYPED_TEST_P(EventStoreContract, AnUpsertIsAppliedAndReadBack) {
  const std::string t = this->ReadyTenant("ct_read");
  auto out = this->Apply({contract::Message(t, "m1", "hello", 100, 1)});
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0], ApplyOutcome::kApplied);
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m1"), "message_text"), "hello");
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m1"), "message_timestamp"),
            "100");
}

TYPED_TEST_P(EventStoreContract, AnOlderEventIsStaleAndChangesNothing) {
  const std::string t = this->ReadyTenant("ct_stale");
  ASSERT_EQ(this->Apply({contract::Message(t, "m1", "newer", 200, 2)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->Apply({contract::Message(t, "m1", "older", 100, 3)}),
            std::vector{ApplyOutcome::kStale});
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m1"), "message_text"), "newer");
}

TYPED_TEST_P(EventStoreContract, TheSameEventAgainLeavesTheSameState) {
  const std::string t = this->ReadyTenant("ct_again");
  ASSERT_EQ(this->Apply({contract::Message(t, "m1", "once", 100, 1)}),
            std::vector{ApplyOutcome::kApplied});
  auto again = this->Apply({contract::Message(t, "m1", "once", 100, 1)});
  ASSERT_EQ(again.size(), 1u);
  EXPECT_TRUE(contract::AppliedOrStale(again[0]));
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m1"), "message_text"), "once");
}

TYPED_TEST_P(EventStoreContract, AnEqualTimeWithALaterStreamSequenceWins) {
  const std::string t = this->ReadyTenant("ct_tie");
  ASSERT_EQ(this->Apply({contract::Message(t, "m1", "seq 5", 100, 5)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->Apply({contract::Message(t, "m1", "seq 4", 100, 4)}),
            std::vector{ApplyOutcome::kStale});
  EXPECT_EQ(this->Apply({contract::Message(t, "m1", "seq 6", 100, 6)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m1"), "message_text"), "seq 6");
}

TYPED_TEST_P(EventStoreContract, OnATieOfTimeARealtimeEventWinsOverAHistoryItem) {
  // SPEC §11: the streams' sequences do not compare; on equal seconds realtime wins.
  const std::string t = this->ReadyTenant("ct_source");
  ASSERT_EQ(this->Apply({contract::Message(t, "m1", "realtime", 100, 5)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->Apply({contract::Message(t, "m1", "history", 100, 9, Source::kHistory)}),
            std::vector{ApplyOutcome::kStale});
  ASSERT_EQ(this->Apply({contract::Message(t, "m2", "history", 100, 9, Source::kHistory)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->Apply({contract::Message(t, "m2", "realtime", 100, 5)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m1"), "message_text"),
            "realtime");
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m2"), "message_text"),
            "realtime");
  // A newer history item still wins over an older realtime event.
  EXPECT_EQ(this->Apply({contract::Message(t, "m2", "newer history", 101, 1, Source::kHistory)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m2"), "message_text"),
            "newer history");
}

TYPED_TEST_P(EventStoreContract, AnUpdateOfAMissingRowIsNotYet) {
  const std::string t = this->ReadyTenant("ct_notyet");
  EXPECT_EQ(this->Apply({contract::StatusUpdate(t, "nowhere", "read", 100, 1)}),
            std::vector{ApplyOutcome::kNotYet});
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("nowhere"), "status"),
            std::nullopt);
}

TYPED_TEST_P(EventStoreContract, AnUpdateChangesOnlyTheFieldsItCarries) {
  const std::string t = this->ReadyTenant("ct_partial");
  ASSERT_EQ(this->Apply({contract::Message(t, "m1", "kept", 100, 1)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->Apply({contract::StatusUpdate(t, "m1", "read", 150, 2)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m1"), "status"), "read");
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m1"), "message_text"), "kept");
  // An update older than the row is stale.
  EXPECT_EQ(this->Apply({contract::StatusUpdate(t, "m1", "delivered", 120, 3)}),
            std::vector{ApplyOutcome::kStale});
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m1"), "status"), "read");
}

TYPED_TEST_P(EventStoreContract, SeveralWritesToOneKeyInOneCallEndInTheNewest) {
  const std::string t = this->ReadyTenant("ct_collapse");
  // Outcomes as if applied one after the other, in order (ports.hpp): the two older writes
  // that come after the newest are stale, whatever the store does inside the call.
  auto out = this->Apply({contract::Message(t, "m1", "second", 200, 2),
                          contract::Message(t, "m1", "third", 300, 3),
                          contract::Message(t, "m1", "first", 100, 1),
                          contract::StatusUpdate(t, "m1", "read", 250, 4)});
  EXPECT_EQ(out, (std::vector{ApplyOutcome::kApplied, ApplyOutcome::kApplied, ApplyOutcome::kStale,
                              ApplyOutcome::kStale}));
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m1"), "message_text"), "third");
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m1"), "message_timestamp"),
            "300");
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m1"), "status"), "sent")
      << "the update is older than the newest upsert";
}

TYPED_TEST_P(EventStoreContract, TenantsDoNotSeeEachOthersRows) {
  const std::string a = this->ReadyTenant("ct_iso_a");
  const std::string b = this->ReadyTenant("ct_iso_b");
  auto out = this->Apply(
      {contract::Message(a, "m1", "for a", 100, 1), contract::Message(b, "m1", "for b", 50, 2)});
  EXPECT_EQ(out, (std::vector{ApplyOutcome::kApplied, ApplyOutcome::kApplied}));
  EXPECT_EQ(this->Text(a, Table::kMessages, contract::MessageKey("m1"), "message_text"), "for a");
  EXPECT_EQ(this->Text(b, Table::kMessages, contract::MessageKey("m1"), "message_text"), "for b");
}

TYPED_TEST_P(EventStoreContract, TenantIdsThatDifferOnlyByCaseCollide) {
  const std::string t = this->ReadyTenant("ct_case");
  ASSERT_TRUE(this->h_.Store().EnsureTenant(t).ok()) << "a known tenant again is fine";
  std::string other = t;
  other[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(other[0])));
  ASSERT_NE(other, t);
  auto r = this->h_.Store().EnsureTenant(other);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, pipeline::StoreErrorKind::kCollision) << r.error().message;
}

TYPED_TEST_P(EventStoreContract, TheFirstInboundMessageOfAPhoneOnboardsItOnce) {
  const std::string t = this->ReadyTenant("ct_onboard");
  auto out = this->Apply({contract::InboundMessage(t, "in1", "5511", 100, 1),
                          contract::InboundMessage(t, "in2", "5511", 101, 2)});
  EXPECT_EQ(out, (std::vector{ApplyOutcome::kApplied, ApplyOutcome::kApplied}));
  EXPECT_EQ(this->Apply({contract::InboundMessage(t, "in3", "5511", 102, 3)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->h_.OnboardingLogRows(t), 1u);
  // SPEC §11: no campaign, so origin DirectChat and tags {Onboarded}.
  EXPECT_EQ(this->Text(t, Table::kContacts, contract::ContactKey("5511"), "origin"), "DirectChat");
  EXPECT_EQ(this->Text(t, Table::kContacts, contract::ContactKey("5511"), "tags"),
            R"(["Onboarded"])");
  // The product's own choice (docs/event-contract.md, Onboarding): the contact takes the
  // message's chat.
  EXPECT_EQ(this->Text(t, Table::kContacts, contract::ContactKey("5511"), "chat_id"), "c-5511");
}

TYPED_TEST_P(EventStoreContract, AContactEventOverridesWhatOnboardingWrote) {
  // Onboarding creates the contact with the lowest version: a contacts.upsert older than the
  // message still applies.
  const std::string t = this->ReadyTenant("ct_override");
  ASSERT_EQ(this->Apply({contract::InboundMessage(t, "in1", "5533", 200, 2)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->Apply({contract::Contact(t, "5533", "Named", 150, 3)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->Text(t, Table::kContacts, contract::ContactKey("5533"), "push_name"), "Named");
  EXPECT_EQ(this->Text(t, Table::kContacts, contract::ContactKey("5533"), "origin"), "DirectChat");
  EXPECT_EQ(this->h_.OnboardingLogRows(t), 1u) << "the contact event came after the message";
}

TYPED_TEST_P(EventStoreContract, AContactUpsertEarlierInTheStreamUndoesTheOnboarding) {
  // Processed late (a redelivery), a contacts.upsert that the stream holds before the
  // message: in stream order the contact existed, so nothing was onboarded.
  const std::string t = this->ReadyTenant("ct_undo");
  ASSERT_EQ(this->Apply({contract::InboundMessage(t, "in1", "5544", 200, 5)}),
            std::vector{ApplyOutcome::kApplied});
  ASSERT_EQ(this->h_.OnboardingLogRows(t), 1u);
  EXPECT_EQ(this->Apply({contract::Contact(t, "5544", "Early", 100, 4)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->h_.OnboardingLogRows(t), 0u);
  EXPECT_EQ(this->Text(t, Table::kContacts, contract::ContactKey("5544"), "push_name"), "Early");
  EXPECT_EQ(this->Text(t, Table::kContacts, contract::ContactKey("5544"), "origin"), std::nullopt)
      << "what only onboarding wrote goes with it";
}

TYPED_TEST_P(EventStoreContract, AMessageEarlierInTheStreamThanTheContactOnboardsIt) {
  // Processed late, an inbound message that the stream holds before the contact's first
  // contacts.upsert: in stream order it onboarded the contact.
  const std::string t = this->ReadyTenant("ct_takeover");
  ASSERT_EQ(this->Apply({contract::Contact(t, "5555", "Later", 300, 8)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->Apply({contract::InboundMessage(t, "in1", "5555", 200, 7)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->h_.OnboardingLogRows(t), 1u);
  EXPECT_EQ(this->Text(t, Table::kContacts, contract::ContactKey("5555"), "push_name"), "Later");
  EXPECT_EQ(this->Text(t, Table::kContacts, contract::ContactKey("5555"), "origin"), "DirectChat")
      << "onboarding fills what the contact event left empty";
}

TYPED_TEST_P(EventStoreContract, ARefusedWriteFailsAloneAndTheOthersApply) {
  const std::string t = this->ReadyTenant("ct_refuse");
  this->h_.RefuseMessage(t, "poison");
  auto out = this->Apply({contract::Message(t, "m1", "fine", 100, 1),
                          contract::Message(t, "poison", "refused", 100, 2),
                          contract::Message(t, "m3", "fine too", 100, 3)});
  EXPECT_EQ(out,
            (std::vector{ApplyOutcome::kApplied, ApplyOutcome::kFatal, ApplyOutcome::kApplied}));
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m1"), "message_text"), "fine");
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("m3"), "message_text"),
            "fine too");
  EXPECT_EQ(this->Text(t, Table::kMessages, contract::MessageKey("poison"), "message_text"),
            std::nullopt);
}

TYPED_TEST_P(EventStoreContract, AnExistingContactIsNotOnboarded) {
  const std::string t = this->ReadyTenant("ct_known");
  ASSERT_EQ(this->Apply({contract::Contact(t, "5522", "Known", 100, 1)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->Apply({contract::InboundMessage(t, "in1", "5522", 200, 2)}),
            std::vector{ApplyOutcome::kApplied});
  EXPECT_EQ(this->h_.OnboardingLogRows(t), 0u);
  EXPECT_EQ(this->Text(t, Table::kContacts, contract::ContactKey("5522"), "push_name"), "Known");
  EXPECT_EQ(this->Text(t, Table::kContacts, contract::ContactKey("5522"), "origin"), std::nullopt);
}

REGISTER_TYPED_TEST_SUITE_P(
    EventStoreContract, AnUpsertIsAppliedAndReadBack, AnOlderEventIsStaleAndChangesNothing,
    TheSameEventAgainLeavesTheSameState, AnEqualTimeWithALaterStreamSequenceWins,
    OnATieOfTimeARealtimeEventWinsOverAHistoryItem, AnUpdateOfAMissingRowIsNotYet,
    AnUpdateChangesOnlyTheFieldsItCarries, SeveralWritesToOneKeyInOneCallEndInTheNewest,
    TenantsDoNotSeeEachOthersRows, TenantIdsThatDifferOnlyByCaseCollide,
    TheFirstInboundMessageOfAPhoneOnboardsItOnce, AContactEventOverridesWhatOnboardingWrote,
    AContactUpsertEarlierInTheStreamUndoesTheOnboarding,
    AMessageEarlierInTheStreamThanTheContactOnboardsIt, AnExistingContactIsNotOnboarded,
    ARefusedWriteFailsAloneAndTheOthersApply);

}  // namespace evp::testing
