// JetStreamSource against a real nats-server: fetch bounds, settlement and shutdown hand-back.
#include <gtest/gtest.h>

#include <set>

#include "config/config.hpp"
#include "nats/jetstream.hpp"
#include "support/nats_client.hpp"
#include "support/servers.hpp"

namespace evp::testing {
namespace {

using std::chrono::milliseconds;

struct SourceFixture {
  NatsServer server;
  TestPublisher publisher{server.Url()};
  std::shared_ptr<nats::NatsConnection> conn;
  nats::ConsumerSpec spec{"SRC", "src_consumer", milliseconds(30'000), 5, 100'000, ""};

  SourceFixture() {
    EXPECT_EQ(publisher.AddStream("SRC", {"src.>"}), "");
    Config config;
    config.nats_url = server.Url();
    auto c = nats::NatsConnection::Connect(config, "source-test");
    EXPECT_TRUE(c.ok()) << c.error();
    conn = c.value();
    auto made = conn->EnsureConsumer(spec);
    EXPECT_TRUE(made.ok()) << made.error();
  }

  void PublishMany(int n) {
    for (int i = 0; i < n; ++i) {
      auto r = publisher.Publish("src.e", std::to_string(i), "id-" + std::to_string(i));
      ASSERT_TRUE(r.ok) << r.error;
    }
  }

  std::unique_ptr<nats::JetStreamSource> Bind() {
    auto src = nats::JetStreamSource::Bind(conn, spec);
    EXPECT_TRUE(src.ok()) << src.error();
    return std::move(src.value());
  }

  uint64_t AckPending() {
    uint64_t pending = 0;
    uint64_t ack_pending = 0;
    auto src = Bind();
    EXPECT_TRUE(src->Lag(&pending, &ack_pending));
    return ack_pending;
  }
};

std::vector<pipeline::Decision> AckAll(size_t n) {
  return std::vector<pipeline::Decision>(n, pipeline::Decision{});
}

TEST(ConsumerChanges, NamesEachSettingAReplicaWouldChangeForAll) {
  const nats::ConsumerSpec wanted{"S", "d", milliseconds(30'000), 20, 120, ""};
  EXPECT_EQ(nats::ConsumerChanges(milliseconds(30'000), 20, 120, wanted), "");
  EXPECT_EQ(nats::ConsumerChanges(milliseconds(60'000), 20, 16'000, wanted),
            "ack_wait 60000ms -> 30000ms, max_ack_pending 16000 -> 120");
  EXPECT_EQ(nats::ConsumerChanges(milliseconds(30'000), 5, 120, wanted), "max_deliver 5 -> 20");
}

TEST(ConsumerChanges, AnExistingConsumerIsUpdatedToTheNewSettings) {
  SourceFixture f;
  nats::ConsumerSpec smaller = f.spec;
  smaller.max_ack_pending = 50;
  auto updated = f.conn->EnsureConsumer(smaller);
  ASSERT_TRUE(updated.ok()) << updated.error();
  // The server enforces the new limit: 60 messages, at most 50 delivered and unacked.
  f.PublishMany(60);
  auto src = nats::JetStreamSource::Bind(f.conn, smaller);
  ASSERT_TRUE(src.ok()) << src.error();
  auto batch = src.value()->Fetch(100, milliseconds(500));
  ASSERT_TRUE(batch.ok()) << batch.error();
  EXPECT_EQ(batch->messages.size(), 50u);
  src.value()->Settle(batch->token, AckAll(batch->messages.size()));
}

// Very short waits make the server deliver into a fetch that has already given up, so the
// next fetch starts with queued messages: the case where libnats 3.4.1 overruns its array.
TEST(JetStreamSource, ShortWaitsNeverReturnMoreThanAskedAndLoseNothing) {
  SourceFixture f;
  constexpr int kTotal = 3000;
  f.PublishMany(kTotal);
  auto src = f.Bind();
  std::set<std::string> seen;
  int oversized = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (static_cast<int>(seen.size()) < kTotal && std::chrono::steady_clock::now() < deadline) {
    auto batch = src->Fetch(16, milliseconds(1));
    ASSERT_TRUE(batch.ok()) << batch.error();
    if (batch->messages.size() > 16) ++oversized;
    for (const auto& m : batch->messages) seen.insert(m.msg_id);
    if (!batch->messages.empty()) src->Settle(batch->token, AckAll(batch->messages.size()));
  }
  EXPECT_EQ(oversized, 0);
  EXPECT_EQ(static_cast<int>(seen.size()), kTotal);
}

// A source destroyed with unsettled messages NAKs them: another consumer instance gets them
// at once instead of after AckWait (30 s here).
TEST(JetStreamSource, DestroyedSourceHandsBackUnsettledMessages) {
  SourceFixture f;
  f.PublishMany(50);
  {
    auto src = f.Bind();
    auto batch = src->Fetch(50, milliseconds(2000));
    ASSERT_TRUE(batch.ok()) << batch.error();
    ASSERT_FALSE(batch->messages.empty());
  }
  auto again = f.Bind();
  std::set<std::string> seen;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (seen.size() < 50 && std::chrono::steady_clock::now() < deadline) {
    auto batch = again->Fetch(50, milliseconds(500));
    ASSERT_TRUE(batch.ok()) << batch.error();
    for (const auto& m : batch->messages) seen.insert(m.msg_id);
    if (!batch->messages.empty()) again->Settle(batch->token, AckAll(batch->messages.size()));
  }
  EXPECT_EQ(seen.size(), 50u) << "unsettled messages waited for AckWait";
}

// Under backlog a batch is pulled in parts; a full batch comes back whole, and with a byte
// budget it stops growing once its payload reaches the budget.
TEST(JetStreamSource, ABacklogFillsTheBatchInPartsUpToItsByteBudget) {
  SourceFixture f;
  const std::string body(100, 'x');
  for (int i = 0; i < 2600; ++i) {
    auto r = f.publisher.Publish("src.e", body, "id-" + std::to_string(i));
    ASSERT_TRUE(r.ok) << r.error;
  }
  auto src = f.Bind();
  std::set<std::string> seen;
  auto take = [&](int max) {
    auto batch = src->Fetch(max, milliseconds(200));
    EXPECT_TRUE(batch.ok()) << batch.error();
    if (!batch.ok()) return size_t{0};
    for (const auto& m : batch->messages) seen.insert(m.msg_id);
    if (!batch->messages.empty()) src->Settle(batch->token, AckAll(batch->messages.size()));
    return batch->messages.size();
  };
  // More than one part (kFetchPart) per batch.
  EXPECT_EQ(take(1000), 1000u);
  // 30,000 bytes of 100-byte messages: 300, whatever the part size.
  src->SetBatchByteBudget(30'000);
  EXPECT_EQ(take(1000), 300u);
  // The first part is sized by the last batch's messages too: 1,000 bytes are 10 of them.
  src->SetBatchByteBudget(1000);
  EXPECT_EQ(take(1000), 10u);
  // A budget smaller than one message still takes one: a batch never stalls.
  src->SetBatchByteBudget(50);
  EXPECT_EQ(take(1000), 1u);
  src->SetBatchByteBudget(0);
  EXPECT_EQ(take(5000), 2600u - 1000u - 300u - 10u - 1u);
  EXPECT_EQ(seen.size(), 2600u);
}

// NatsConnection::PublishAll, what the processor publishes a batch's dead letters with: the
// acks are awaited together, and the outcome of each message is still exact.
// A connection to a server with the stream LETTERS on letters.>.
struct LettersFixture {
  NatsServer server;
  TestPublisher publisher{server.Url()};
  std::shared_ptr<nats::NatsConnection> conn;

  LettersFixture() {
    EXPECT_EQ(publisher.AddStream("LETTERS", {"letters.>"}), "");
    Config config;
    config.nats_url = server.Url();
    auto c = nats::NatsConnection::Connect(config, "publish-all-test");
    EXPECT_TRUE(c.ok()) << c.error();
    if (c.ok()) conn = c.value();
  }

  // Messages the stream holds.
  uint64_t Stored() {
    jsStreamInfo* si = nullptr;
    jsErrCode jerr{};
    uint64_t n = 0;
    if (js_GetStreamInfo(&si, publisher.JetStream(), "LETTERS", nullptr, &jerr) == NATS_OK) {
      n = si->State.Msgs;
    }
    if (si != nullptr) jsStreamInfo_Destroy(si);
    return n;
  }
};

TEST(NatsConnection, PublishAllStoresEveryMessageOnceAndNamesTheOneThatFailed) {
  LettersFixture f;
  ASSERT_NE(f.conn, nullptr);
  auto& conn = f.conn;
  constexpr size_t kLetters = 500;
  std::vector<std::string> bodies;
  for (size_t i = 0; i < kLetters; ++i) bodies.push_back("letter " + std::to_string(i));
  std::vector<nats::NatsConnection::Outgoing> letters;
  for (size_t i = 0; i < kLetters; ++i) {
    letters.push_back(
        {"letters.acme", bodies[i], "letter-" + std::to_string(i), {{"Evp-Reason", "test"}}});
  }
  auto first = conn->PublishAll(letters);
  ASSERT_EQ(first.size(), kLetters);
  for (const auto& r : first) EXPECT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(f.Stored(), kLetters);

  // The same again (a redelivered batch): the stream drops the repeats, each is a success.
  auto again = conn->PublishAll(letters);
  for (const auto& r : again) EXPECT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(f.Stored(), kLetters);

  // A subject no stream captures fails alone; its neighbours are stored once.
  const std::vector<nats::NatsConnection::Outgoing> mixed = {{"letters.acme", "a", "mixed-1", {}},
                                                             {"nowhere.acme", "b", "mixed-2", {}},
                                                             {"letters.acme", "c", "mixed-3", {}}};
  auto outcomes = conn->PublishAll(mixed);
  ASSERT_EQ(outcomes.size(), 3u);
  EXPECT_TRUE(outcomes[0].ok());
  EXPECT_FALSE(outcomes[1].ok()) << "no stream stored it";
  EXPECT_TRUE(outcomes[2].ok());
  EXPECT_EQ(f.Stored(), kLetters + 2);
}

// With nats-server gone, PublishAll does not wait out one timeout per letter: once one
// publish fails on a lost connection, the rest fail at once (their events come again).
TEST(NatsConnection, PublishAllWithoutAServerFailsEveryLetterWithoutWaitingForEach) {
  LettersFixture f;
  ASSERT_NE(f.conn, nullptr);
  auto& conn = f.conn;
  f.server.Stop();
  constexpr size_t kLetters = 20;
  std::vector<nats::NatsConnection::Outgoing> letters;
  for (size_t i = 0; i < kLetters; ++i) {
    letters.push_back({"letters.acme", "letter", "outage-" + std::to_string(i), {}});
  }
  const auto started = std::chrono::steady_clock::now();
  auto outcomes = conn->PublishAll(letters);
  const auto took = std::chrono::steady_clock::now() - started;
  ASSERT_EQ(outcomes.size(), kLetters);
  for (const auto& r : outcomes) EXPECT_FALSE(r.ok()) << "nothing can have been stored";
  // One synchronous try (10 s) after the async wait (10 s at most), not one try per letter
  // (20 x 10 s): the bound is loose on purpose.
  EXPECT_LT(took, std::chrono::seconds(60));
}

}  // namespace
}  // namespace evp::testing
