// Onboarding follows stream order, whatever order the events are processed in: after a crash
// the in-flight events come back after newer ones, and DLQ retries land late. The writer is
// driven directly on a real PostgreSQL, in many processing orders and batchings, and every
// order must leave the contacts and onboarding_log of the stream-order run.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <future>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <random>
#include <thread>

#include "core/embedded.hpp"
#include "postgres/pg_store.hpp"
#include "support/db.hpp"
#include "support/mutations.hpp"
#include "support/servers.hpp"

namespace evp::testing {
namespace {

using handlers::Mutation;
using nlohmann::json;

Mutation Inbound(const std::string& tenant, uint64_t seq, const std::string& message_id,
                 const std::string& phone, const json& campaign = nullptr) {
  json doc = {{"message_id", message_id},
              {"chat_id", "chat-" + message_id},
              {"agent_id", "a1"},
              {"from_phone", phone},
              {"flow", "IN"},
              {"message_timestamp", 1000 + seq}};
  if (!campaign.is_null()) doc["campaign"] = campaign;
  return handlers::BuildMutation(EventType::kMessagesUpsert, doc, tenant,
                                 Version{static_cast<int64_t>(1000 + seq), Source::kRealtime, seq});
}

Mutation ContactEvent(EventType type, const std::string& tenant, uint64_t seq,
                      const std::string& phone, const std::string& push_name,
                      const std::string& contact_type = "") {
  json doc = {{"agent_id", "a1"}, {"phone_number", phone}, {"push_name", push_name}};
  if (!contact_type.empty()) doc["type"] = contact_type;
  return handlers::BuildMutation(type, doc, tenant,
                                 Version{static_cast<int64_t>(1000 + seq), Source::kRealtime, seq});
}

Mutation ContactUpsert(const std::string& tenant, uint64_t seq, const std::string& phone,
                       const std::string& push_name, const std::string& contact_type = "") {
  return ContactEvent(EventType::kContactsUpsert, tenant, seq, phone, push_name, contact_type);
}

Mutation ContactUpdate(const std::string& tenant, uint64_t seq, const std::string& phone,
                       const std::string& push_name) {
  return ContactEvent(EventType::kContactsUpdate, tenant, seq, phone, push_name);
}

// The events of one stream, in stream order, covering each way two events can disagree.
std::vector<Mutation> Stream(const std::string& tenant) {
  return {
      // +100: a message, then the contact's first upsert, then another message.
      Inbound(tenant, 10, "m1", "+100", {{"origin", "Ads"}, {"tags", {"x"}}}),
      ContactUpsert(tenant, 20, "+100", "Ann"),
      Inbound(tenant, 30, "m3", "+100"),
      // +200: the contact first: its message does not onboard.
      ContactUpsert(tenant, 11, "+200", "Bob"),
      Inbound(tenant, 21, "m21", "+200", {{"origin", "Late"}}),
      // +300: two messages: the first one onboards.
      Inbound(tenant, 12, "m12", "+300"),
      Inbound(tenant, 22, "m22", "+300", {{"origin", "Promo"}, {"assigned_to", "u9"}}),
      // +400: the contact first, then a message, then an update of the contact.
      ContactUpsert(tenant, 8, "+400", "Uma", "PERSONAL"),
      Inbound(tenant, 13, "m13", "+400", {{"origin", "Ads"}, {"tags", {"x"}}}),
      ContactUpdate(tenant, 23, "+400", "Dee"),
      // +500: two upserts around a message. (Each carries every field: an older upsert
      // processed after a newer one is stale as a whole, SPEC §11.)
      ContactUpsert(tenant, 9, "+500", "Early", "BUSINESS"),
      Inbound(tenant, 14, "m14", "+500", {{"origin", "Ads"}, {"tags", {"x"}}}),
      ContactUpsert(tenant, 24, "+500", "Pat", "PERSONAL"),
      // +600: a campaign message, a plain one, then an upsert without campaign fields.
      Inbound(tenant, 5, "m5", "+600",
              {{"origin", "Promo"}, {"tags", {"p"}}, {"assigned_to", "u7"}}),
      Inbound(tenant, 15, "m15", "+600"),
      ContactUpsert(tenant, 25, "+600", "Sam"),
  };
}

// A mutation that PostgreSQL rejects, so that the batch is written again one event at a time.
Mutation Poison(const std::string& tenant) {
  Mutation m = Inbound(tenant, 99, "poison", "+999");
  m.onboarding.reset();
  for (auto& v : m.values) {
    if (v.column->name == "message_timestamp") v.text = "not a number";
  }
  return m;
}

std::string Dump(const std::string& dsn, const std::string& tenant) {
  const std::string s = std::string(kTenantPrefix) + tenant;
  return QueryString(dsn,
                     "SELECT coalesce(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', "
                     "agent_id, phone_number, chat_id, push_name, type, origin, tags, "
                     "assigned_to, ver_seq, onboard_seq, first_upsert_seq, onboarded_cols), "
                     "E'\\n' ORDER BY agent_id, phone_number), '') "
                     "FROM " +
                         s + ".contacts")
             .value_or("") +
         "\n--\n" +
         QueryString(dsn,
                     "SELECT coalesce(string_agg(format('%s|%s|%s|%s|%s|%s|%s', agent_id, "
                     "phone_number, chat_id, message_id, origin, tags, stream_seq), E'\\n' ORDER "
                     "BY agent_id, phone_number), '') FROM " +
                         s + ".onboarding_log")
             .value_or("");
}

class OnboardingOrder : public ::testing::Test {
 protected:
  void SetUp() override {
    dsn_ = PostgresServer::Shared().Dsn();
    auto migrated = postgres::MigrateOps(dsn_, kOpsSchema);
    ASSERT_TRUE(migrated.ok()) << migrated.error();
    store_ = std::make_unique<postgres::PgStore>(dsn_, kOpsSchema, kTenantPrefix);
  }

  // Applies the stream's events to a fresh tenant in `order`, `per_batch` events per batch
  // (with a poison event in every batch when `isolate`), and returns the tenant's state.
  std::string Run(const std::vector<size_t>& order, size_t per_batch, bool isolate) {
    const std::string tenant = "ord" + std::to_string(next_++);
    EXPECT_TRUE(store_->EnsureTenant(tenant).ok());
    const std::vector<Mutation> stream = Stream(tenant);
    // An update whose row is missing ("not yet") comes back after the rest, as the
    // processor's delayed redelivery does.
    std::deque<size_t> queue(order.begin(), order.end());
    for (int batches = 0; !queue.empty() && batches < 100; ++batches) {
      std::vector<size_t> taken;
      std::vector<Mutation> batch;
      while (!queue.empty() && taken.size() < per_batch) {
        taken.push_back(queue.front());
        batch.push_back(stream[queue.front()]);
        queue.pop_front();
      }
      if (isolate) batch.push_back(Poison(tenant));
      auto results = store_->Apply(batch);
      EXPECT_TRUE(results.ok()) << results.error().message;
      if (!results.ok()) continue;
      for (size_t k = 0; k < taken.size(); ++k) {
        const auto outcome = results.value()[k].outcome;
        if (outcome == pipeline::ApplyOutcome::kNotYet) {
          queue.push_back(taken[k]);
          continue;
        }
        // Stale only for an event seen before (a redelivery).
        EXPECT_TRUE(outcome == pipeline::ApplyOutcome::kApplied ||
                    outcome == pipeline::ApplyOutcome::kStale)
            << "event " << taken[k] << ": outcome " << static_cast<int>(outcome);
      }
      if (isolate) {
        EXPECT_EQ(results.value().back().outcome, pipeline::ApplyOutcome::kFatal);
      }
    }
    EXPECT_TRUE(queue.empty()) << queue.size() << " events never applied";
    return Dump(dsn_, tenant);
  }

  std::string dsn_;
  std::unique_ptr<postgres::PgStore> store_;
  int next_ = 0;
};

std::vector<size_t> StreamOrder() {
  std::vector<size_t> order(Stream("x").size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  // By stream sequence, as a fault-free consumer sees them.
  const auto stream = Stream("x");
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return stream[a].version.seq < stream[b].version.seq; });
  return order;
}

TEST_F(OnboardingOrder, ATenantOfTheFirstSchemaVersionIsMigratedAndKeepsItsRows) {
  // A tenant created by the first release: schema at migration 1, one onboarded contact.
  const std::string tenant = "firstver";
  const std::string s = std::string(kTenantPrefix) + tenant;
  std::string_view first;
  for (const EmbeddedFile& f : EmbeddedMigrations()) {
    if (f.path == "tenant/0001_init.sql") first = f.content;
  }
  ASSERT_FALSE(first.empty());
  {
    pqxx::connection c(dsn_);
    pqxx::work tx(c);
    tx.exec0("CREATE SCHEMA " + s);
    tx.exec0("SET LOCAL search_path TO " + s);
    tx.exec0(std::string(first));
    tx.exec0(
        "INSERT INTO contacts (agent_id, phone_number, company_id, origin, tags, ver_ts, "
        "ver_src, ver_seq) VALUES ('a1', '+1', 'firstver', 'DirectChat', '{Onboarded}', 0, 0, 0)");
    tx.exec0(
        "INSERT INTO onboarding_log (agent_id, phone_number, company_id, message_id) VALUES "
        "('a1', '+1', 'firstver', 'm0')");
    tx.exec_params0("INSERT INTO " + std::string(kOpsSchema) +
                        ".tenants (company_id, schema_name, migration_version) VALUES ($1, $2, 1)",
                    tenant, s);
    tx.commit();
  }
  ASSERT_TRUE(store_->EnsureTenant(tenant).ok());
  EXPECT_EQ(QueryInt(dsn_, "SELECT migration_version FROM " + std::string(kOpsSchema) +
                               ".tenants WHERE company_id = 'firstver'"),
            3);
  // The old log row stays where it was (stream_seq 0 is never moved) and has an updated_at.
  EXPECT_EQ(QueryInt(dsn_, "SELECT count(*) FROM " + s +
                               ".onboarding_log WHERE message_id = 'm0' AND stream_seq = 0 AND "
                               "updated_at >= created_at"),
            1);
  // The migrated schema takes the batch writer's statements: a known contact is not onboarded
  // again, a new one is.
  auto results = store_->Apply({Inbound(tenant, 5, "m5", "+1"), Inbound(tenant, 6, "m6", "+2")});
  ASSERT_TRUE(results.ok()) << results.error().message;
  for (const auto& r : results.value()) EXPECT_EQ(r.outcome, pipeline::ApplyOutcome::kApplied);
  EXPECT_EQ(QueryString(dsn_,
                        "SELECT string_agg(phone_number || ':' || message_id, ',' ORDER BY "
                        "phone_number) FROM " +
                            s + ".onboarding_log"),
            "+1:m0,+2:m6");
}

TEST_F(OnboardingOrder, StreamOrderOnboardsTheFirstInboundMessageOfUnknownContacts) {
  // agent|phone|chat_id|push_name|type|origin|tags|assigned_to|ver_seq|onboard_seq|
  // first_upsert_seq|onboarded_cols, then the log rows.
  const std::string expected =
      // m1 onboards with its campaign; the upsert after it fills in around it.
      "a1|+100|chat-m1|Ann||Ads|{x}||20|10|20|7\n"
      // The upsert came first: no onboarding.
      "a1|+200||Bob|||||11||11|0\n"
      // The first of two messages onboards; the contact keeps the lowest version.
      "a1|+300|chat-m12|||DirectChat|{Onboarded}||0|12||7\n"
      // The upsert came first, then the update over it.
      "a1|+400||Dee|PERSONAL||||23||8|0\n"
      // The upsert came first: no onboarding, whichever upsert is processed first.
      "a1|+500||Pat|PERSONAL||||24||9|0\n"
      // The campaign message onboards; the later upsert fills in around it.
      "a1|+600|chat-m5|Sam||Promo|{p}|u7|25|5|25|15\n"
      "--\n"
      "a1|+100|chat-m1|m1|Ads|{x}|10\n"
      "a1|+300|chat-m12|m12|DirectChat|{Onboarded}|12\n"
      "a1|+600|chat-m5|m5|Promo|{p}|5";
  EXPECT_EQ(Run(StreamOrder(), 1, false), expected);
  EXPECT_EQ(Run(StreamOrder(), 1000, false), expected) << "one batch";
}

TEST_F(OnboardingOrder, EveryProcessingOrderEndsInTheStreamOrderState) {
  const std::string expected = Run(StreamOrder(), 1, false);
  std::vector<size_t> order = StreamOrder();
  std::reverse(order.begin(), order.end());
  EXPECT_EQ(Run(order, 1, false), expected) << "reverse order";
  EXPECT_EQ(Run(order, order.size(), false), expected) << "reverse order, one batch";
  std::mt19937 rng(7);
  for (int round = 0; round < 12; ++round) {
    std::shuffle(order.begin(), order.end(), rng);
    const size_t per_batch = 1 + static_cast<size_t>(round % 3);
    std::string shown;
    for (size_t i : order) shown += std::to_string(i) + " ";
    EXPECT_EQ(Run(order, per_batch, false), expected)
        << "order " << shown << "in batches of " << per_batch;
  }
}

TEST_F(OnboardingOrder, TheRowAtATimePathDecidesAsTheSetPath) {
  // A poison event in every batch makes the store write each event alone.
  const std::string expected = Run(StreamOrder(), 1, false);
  std::vector<size_t> order = StreamOrder();
  EXPECT_EQ(Run(order, order.size(), true), expected) << "stream order";
  std::reverse(order.begin(), order.end());
  EXPECT_EQ(Run(order, 1, true), expected) << "reverse order";
  std::mt19937 rng(11);
  for (int round = 0; round < 4; ++round) {
    std::shuffle(order.begin(), order.end(), rng);
    std::string shown;
    for (size_t i : order) shown += std::to_string(i) + " ";
    EXPECT_EQ(Run(order, 2, true), expected) << "order " << shown;
  }
}

TEST_F(OnboardingOrder, RedeliveringEveryEventChangesNothing) {
  const std::string expected = Run(StreamOrder(), 1, false);
  std::vector<size_t> twice = StreamOrder();
  std::vector<size_t> again = StreamOrder();
  std::reverse(again.begin(), again.end());
  twice.insert(twice.end(), again.begin(), again.end());
  EXPECT_EQ(Run(twice, 3, false), expected);
}

TEST_F(OnboardingOrder, ALogRowMovedToAnEarlierMessageTellsWhen) {
  const std::string tenant = "moved";
  const std::string s = std::string(kTenantPrefix) + tenant;
  ASSERT_TRUE(store_->EnsureTenant(tenant).ok());
  // The later message is processed first (a redelivery after a crash), then the earlier one
  // takes the log row over; another contact's row is never touched.
  ASSERT_TRUE(
      store_->Apply({Inbound(tenant, 20, "m20", "+1"), Inbound(tenant, 21, "m21", "+2")}).ok());
  ASSERT_TRUE(store_->Apply({Inbound(tenant, 10, "m10", "+1")}).ok());
  EXPECT_EQ(QueryString(dsn_,
                        "SELECT string_agg(phone_number || ':' || message_id || ':' || "
                        "(updated_at > created_at), ',' ORDER BY phone_number) FROM " +
                            s + ".onboarding_log"),
            "+1:m10:true,+2:m21:false");
}

// Another writer (a replica, the DLQ worker) onboards the same contact at the same time:
// its transaction holds the new contact row while this store writes an event of that
// contact, and commits once the store's statement waits for it.
std::string RaceWithUncommittedOnboarding(const std::string& dsn, postgres::PgStore& store,
                                          const std::string& tenant, const Mutation& held,
                                          const Mutation& racing) {
  EXPECT_TRUE(store.EnsureTenant(tenant).ok());
  const std::string schema = "\"" + std::string(kTenantPrefix) + tenant + "\"";
  pqxx::connection other(dsn);
  pqxx::work tx(other);
  std::string rows;
  postgres::SetWriter::AppendOnboarding(rows, held);
  tx.exec_params0(postgres::SetWriter::OnboardingSql('o', schema), rows + "]", tenant);

  auto applied = std::async(std::launch::async, [&] {
    auto r = store.Apply(std::vector<Mutation>{racing});
    return r.ok() && r.value().at(0).outcome == pipeline::ApplyOutcome::kApplied;
  });
  // The store's statement is waiting for the held row lock.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  bool waiting = false;
  while (!waiting && std::chrono::steady_clock::now() < deadline) {
    waiting =
        TryQueryInt(dsn, "SELECT count(*) FROM pg_stat_activity WHERE " +
                             std::to_string(other.backendpid()) + " = ANY(pg_blocking_pids(pid))")
            .value_or(0) > 0;
    if (!waiting) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(waiting) << "the store never waited for the concurrent writer";
  tx.commit();
  EXPECT_TRUE(applied.get());
  return Dump(dsn, tenant);
}

TEST_F(OnboardingOrder, AConcurrentLaterMessageDoesNotKeepTheOnboarding) {
  const std::string tenant = "race1";
  std::vector<Mutation> stream = Stream(tenant);
  // +300: m22 (later) held by the other writer while m12 (earlier) is written.
  const std::string state =
      RaceWithUncommittedOnboarding(dsn_, *store_, tenant, stream[6], stream[5]);
  EXPECT_NE(state.find("a1|+300|chat-m12|||DirectChat|{Onboarded}||0|12||7\n"), std::string::npos)
      << state;
  EXPECT_NE(state.find("a1|+300|chat-m12|m12|DirectChat|{Onboarded}|12"), std::string::npos)
      << state;
  EXPECT_EQ(state.find("m22"), std::string::npos) << state;
}

TEST_F(OnboardingOrder, AConcurrentLaterMessageLeavesNoLogRowWhenTheUpsertCameFirst) {
  const std::string tenant = "race2";
  std::vector<Mutation> stream = Stream(tenant);
  // +200: m21 (later) held by the other writer while the contact's upsert (earlier) is
  // written.
  const std::string state =
      RaceWithUncommittedOnboarding(dsn_, *store_, tenant, stream[4], stream[3]);
  EXPECT_EQ(state, "a1|+200||Bob|||||11||11|0\n--\n") << state;
}

}  // namespace
}  // namespace evp::testing
