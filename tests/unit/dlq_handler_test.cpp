// DLQ worker decisions (SPEC §7): a dead letter is acked only once its outcome is durable;
// fatal ones are recorded once; retryable ones are re-applied with backoff and a counted
// attempt; undecodable DLQ messages are still recorded with their bytes; a database outage
// NAKs the rest of the batch untouched and burns no attempt.
#include "dlq/dlq_handler.hpp"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "observability/metrics.hpp"
#include "unit/fakes.hpp"
#include "validation/schema_registry.hpp"

namespace evp::dlq {
namespace {

using evp::testing::FakeClock;
using evp::testing::InMemoryEventStore;
using evp::testing::InMemoryExhaustedStore;
using evp::testing::RecordingDeadLetterSink;
using pipeline::Decision;
using pipeline::InboundMessage;
using std::chrono::milliseconds;

constexpr uint64_t kSeed = 424242;

DeadLetter Letter(uint64_t seq, ReasonCode code = ReasonCode::kSchemaViolation,
                  ErrorClass cls = ErrorClass::kFatal) {
  DeadLetter dl;
  dl.original = std::string(R"({"chat_id":"c1","jid":"j"})");
  dl.source_subject = "v1.chats.upsert.acme";
  dl.company_id = "acme";
  dl.error_class = cls;
  dl.reason = Failure{code, "/phone_number: required property missing"}.Reason();
  dl.attempts = 1;
  dl.first_failed_ms = dl.last_failed_ms = 1'699'999'999'000;
  dl.source_stream = "EVENTS_REALTIME";
  dl.stream_seq = seq;
  dl.orig_msg_id = "pub-" + std::to_string(seq);
  return dl;
}

class DlqHandlerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    spdlog::set_level(spdlog::level::off);
    auto r = validation::SchemaRegistry::LoadEmbedded();
    ASSERT_TRUE(r.ok()) << r.error();
    schemas_ = new validation::SchemaRegistry(std::move(r).value());
  }
  static void TearDownTestSuite() {
    delete schemas_;
    schemas_ = nullptr;
    spdlog::set_level(spdlog::level::info);
  }

  void SetUp() override {
    auto cfg = Config::FromEnvironment(Binary::kDlqWorker,
                                       [](const std::string& k) -> std::optional<std::string> {
                                         if (k == "POSTGRES_DSN")
                                           return std::string("postgresql://test@localhost/test");
                                         return std::nullopt;
                                       });
    ASSERT_TRUE(cfg.ok());
    config_ = std::make_unique<Config>(std::move(cfg).value());
    handler_ = std::make_unique<DlqHandler>(*config_, *schemas_, store_, exhausted_, sink_, clock_,
                                            metrics_, kSeed);
  }

  InboundMessage FromLetter(const DeadLetter& dl) {
    InboundMessage m;
    m.subject = "v1.dlq." + dl.company_id;
    m.data = dl.original;
    m.headers = EncodeDeadLetterHeaders(dl);
    m.msg_id = dl.DlqMsgId();
    m.stream = "EVENTS_DLQ";
    m.stream_seq = next_seq_++;
    m.publish_time_ns = clock_.UnixMillis() * 1'000'000;
    return m;
  }

  InboundMessage Raw(const std::string& subject, const std::string& data) {
    InboundMessage m;
    m.subject = subject;
    m.data = data;
    m.stream = "EVENTS_DLQ";
    m.stream_seq = next_seq_++;
    return m;
  }

  std::vector<Decision> Run(const std::vector<InboundMessage>& batch) {
    auto d = handler_->Process(batch);
    EXPECT_EQ(d.size(), batch.size());
    return d;
  }

  static bool IsAck(const Decision& d) { return d.kind == Decision::Kind::kAck; }
  static bool IsNak(const Decision& d) { return d.kind == Decision::Kind::kNak; }

  static validation::SchemaRegistry* schemas_;
  observability::Metrics metrics_{"test"};
  InMemoryEventStore store_;
  InMemoryExhaustedStore exhausted_;
  RecordingDeadLetterSink sink_;
  FakeClock clock_;
  std::unique_ptr<Config> config_;
  std::unique_ptr<DlqHandler> handler_;
  uint64_t next_seq_ = 1;
};
validation::SchemaRegistry* DlqHandlerTest::schemas_ = nullptr;

TEST_F(DlqHandlerTest, RecordsAFatalDeadLetterOnceWithItsReasonAndAcks) {
  const DeadLetter dl = Letter(42);
  auto d = Run({FromLetter(dl)});
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_FALSE(handler_->StoreUnavailable());
  ASSERT_EQ(exhausted_.size(), 1u);
  const auto row = exhausted_.Rows()[0];
  EXPECT_EQ(row.reason, dl.reason);
  EXPECT_EQ(row.letter.original, dl.original);
  EXPECT_EQ(row.letter.source_subject, dl.source_subject);
  EXPECT_EQ(row.letter.company_id, "acme");
  EXPECT_EQ(row.letter.error_class, ErrorClass::kFatal);
  EXPECT_EQ(row.letter.attempts, 1);
  EXPECT_EQ(row.letter.stream_seq, 42u);
  EXPECT_EQ(row.letter.source_stream, "EVENTS_REALTIME");
  EXPECT_EQ(row.letter.orig_msg_id, "pub-42");
  EXPECT_EQ(row.letter.first_failed_ms, dl.first_failed_ms);
  EXPECT_EQ(row.letter.IdempotencyKey(), dl.IdempotencyKey());
}

TEST_F(DlqHandlerTest, RecordsOneRowForTheSameMessageDeliveredTwice) {
  const InboundMessage msg = FromLetter(Letter(7));
  InboundMessage again = msg;
  again.delivered = 2;
  auto d = Run({msg});
  auto d2 = Run({again});
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_TRUE(IsAck(d2[0]));
  EXPECT_EQ(exhausted_.size(), 1u);
  EXPECT_EQ(exhausted_.calls, 2);
}

TEST_F(DlqHandlerTest, RecordsOneRowForADuplicateInTheSameBatch) {
  const DeadLetter dl = Letter(7);
  auto d = Run({FromLetter(dl), FromLetter(dl)});  // two DLQ messages, one event
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_TRUE(IsAck(d[1]));
  EXPECT_EQ(exhausted_.size(), 1u);
}

TEST_F(DlqHandlerTest, RecordsOneRowForTheSameEventAtALaterAttempt) {
  DeadLetter later = Letter(7);
  later.attempts = 3;
  auto d = Run({FromLetter(Letter(7)), FromLetter(later)});
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_TRUE(IsAck(d[1]));
  EXPECT_EQ(exhausted_.size(), 1u);
}

TEST_F(DlqHandlerTest, RecordsEachHistoryItemOfOneBatchSeparately) {
  DeadLetter a = Letter(9);
  a.source_stream = "EVENTS_HISTORY";
  a.source_subject = "v1.history.chats.acme";
  a.item_index = 0;
  DeadLetter b = a;
  b.item_index = 2;
  b.original = R"({"chat_id":"c3"})";
  auto d = Run({FromLetter(a), FromLetter(b)});
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_TRUE(IsAck(d[1]));
  ASSERT_EQ(exhausted_.size(), 2u);
  EXPECT_EQ(exhausted_.Rows()[1].letter.item_index, 2);
  EXPECT_EQ(exhausted_.Rows()[1].letter.original, R"({"chat_id":"c3"})");
}

TEST_F(DlqHandlerTest, RecordsADlqMessageWithoutHeadersWithItsExactBytes) {
  const std::string bytes("\xff\xfe\x00not json at all\r\n", 20);
  const InboundMessage msg = Raw("v1.dlq.acme", bytes);
  auto d = Run({msg});
  EXPECT_TRUE(IsAck(d[0]));
  ASSERT_EQ(exhausted_.size(), 1u);
  const auto row = exhausted_.Rows()[0];
  EXPECT_EQ(row.letter.original.size(), bytes.size());
  EXPECT_TRUE(row.letter.original == bytes);
  EXPECT_EQ(row.reason.rfind("malformed_json: ", 0), 0u) << row.reason;
  EXPECT_EQ(row.letter.error_class, ErrorClass::kFatal);
  EXPECT_EQ(row.letter.company_id, "acme");
  EXPECT_EQ(row.letter.source_subject, "v1.dlq.acme");
  EXPECT_EQ(row.letter.stream_seq, msg.stream_seq);
}

TEST_F(DlqHandlerTest, RecordsADlqMessageWithIncompleteHeadersAndSaysWhichIsMissing) {
  InboundMessage msg = FromLetter(Letter(11));
  msg.headers.erase(dlq_headers::kReason);
  auto d = Run({msg});
  EXPECT_TRUE(IsAck(d[0]));
  ASSERT_EQ(exhausted_.size(), 1u);
  const auto row = exhausted_.Rows()[0];
  EXPECT_EQ(row.reason.rfind("malformed_json: ", 0), 0u) << row.reason;
  EXPECT_NE(row.reason.find(dlq_headers::kReason), std::string::npos) << row.reason;
  EXPECT_TRUE(row.letter.original == msg.data);
}

TEST_F(DlqHandlerTest, KeysUndecodableMessagesByTheirDlqSequence) {
  auto d = Run({Raw("v1.dlq._invalid", "a"), Raw("v1.dlq._invalid", "b")});
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_TRUE(IsAck(d[1]));
  EXPECT_EQ(exhausted_.size(), 2u) << "two different DLQ messages are two rows";
}

// A retryable dead letter of an event that failed transiently in the processor.
DeadLetter Retryable(uint64_t seq, const std::string& body, int attempts = 1) {
  DeadLetter dl = Letter(seq, ReasonCode::kRetriesExhausted, ErrorClass::kRetryable);
  dl.original = body;
  dl.reason = "retries_exhausted: failed 20 deliveries: 08006: connection failure";
  dl.attempts = attempts;
  dl.published_ns = 1'699'999'000'000'000'000;
  return dl;
}

const std::string kChat = R"({"chat_id":"c1","jid":"j","phone_number":"+1","push_name":"Ann"})";

TEST_F(DlqHandlerTest, AnAllowListedWorkerLeavesOtherTenantsDeadLettersToTheirOwnWorker) {
  config_->tenants = {"acme"};
  DeadLetter other = Letter(3);
  other.company_id = "beta";
  other.source_subject = "v1.chats.upsert.beta";
  DeadLetter retry = Retryable(4, kChat);
  retry.company_id = "beta";
  retry.source_subject = "v1.chats.upsert.beta";
  DeadLetter invalid = Letter(5, ReasonCode::kInvalidTenant);
  invalid.company_id = "1bad";
  invalid.source_subject = "v1.chats.upsert.1bad";
  auto d = Run({FromLetter(other), FromLetter(retry), FromLetter(invalid), FromLetter(Letter(6))});
  for (const auto& x : d) EXPECT_TRUE(IsAck(x));
  ASSERT_EQ(exhausted_.size(), 2u) << "the invalid tenant's and acme's, not beta's";
  EXPECT_EQ(exhausted_.Rows()[0].letter.company_id, "1bad");
  EXPECT_EQ(exhausted_.Rows()[1].letter.company_id, "acme");
  EXPECT_EQ(store_.apply_calls, 0);
  EXPECT_TRUE(sink_.published.empty());
}

TEST_F(DlqHandlerTest, ReappliesARetryableDeadLetterAndAcksWhenItSucceeds) {
  auto d = Run({FromLetter(Retryable(5, kChat))});
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_EQ(store_.Column("acme", handlers::Table::kChats, "chat_id=c1", "push_name"), "Ann");
  EXPECT_EQ(exhausted_.size(), 0u);
  EXPECT_TRUE(sink_.published.empty());
  EXPECT_FALSE(handler_->StoreUnavailable());
}

TEST_F(DlqHandlerTest, ReappliesWithTheOriginalPublishTimeAsVersion) {
  // connection.update has no time field: its version is the original publish time.
  DeadLetter dl = Retryable(5, R"({"agent_id":"a1","status":"connected"})");
  dl.source_subject = "v1.connection.update.acme";
  ASSERT_TRUE(IsAck(Run({FromLetter(dl)})[0]));
  const auto* row = store_.Row("acme", handlers::Table::kAgents, "agent_id=a1");
  ASSERT_NE(row, nullptr);
  EXPECT_EQ(row->version.seconds, 1'699'999'000);
  EXPECT_EQ(row->version.seq, 5u);
}

TEST_F(DlqHandlerTest, WaitsWithoutSpendingAnAttemptUntilTheRetryIsDue) {
  DeadLetter dl = Retryable(5, kChat, 2);
  dl.not_before_ms = clock_.UnixMillis() + 4000;
  auto d = Run({FromLetter(dl)});
  ASSERT_TRUE(IsNak(d[0]));
  EXPECT_EQ(d[0].delay, milliseconds(4000));
  EXPECT_EQ(store_.apply_calls, 0);
  EXPECT_EQ(store_.TotalRows(), 0u);
  EXPECT_TRUE(sink_.published.empty());
  EXPECT_EQ(exhausted_.size(), 0u);
}

TEST_F(DlqHandlerTest, AFarFutureRetryTimeCannotHoldALetterPastItsLongestDelay) {
  // Evp-Not-Before in the year 5138 (a corrupt or hand-made header): the letter is retried
  // once the longest delay the worker itself could have set has passed since its publish.
  DeadLetter dl = Retryable(5, kChat, 1);
  dl.not_before_ms = 99'999'999'999'999;
  const InboundMessage msg = FromLetter(dl);
  auto d = Run({msg});
  ASSERT_TRUE(IsNak(d[0]));
  EXPECT_LE(d[0].delay, config_->dlq_max_delay);
  clock_.Advance(std::max(config_->dlq_max_delay, config_->ordering_grace) + milliseconds(60'000));
  InboundMessage again = msg;
  again.delivered = 2;
  EXPECT_TRUE(IsAck(Run({again})[0]));
  EXPECT_EQ(store_.Column("acme", handlers::Table::kChats, "chat_id=c1", "push_name"), "Ann");
}

TEST_F(DlqHandlerTest, TheFirstRetryWaitsAboutTheBaseDelayAfterTheProcessorsFailure) {
  DeadLetter dl = Retryable(5, kChat, 1);
  dl.first_failed_ms = dl.last_failed_ms = clock_.UnixMillis();
  auto first = Run({FromLetter(dl)});
  ASSERT_TRUE(IsNak(first[0]));
  EXPECT_GE(first[0].delay, config_->dlq_base_delay / 2);
  EXPECT_LE(first[0].delay, config_->dlq_base_delay);
  EXPECT_EQ(store_.apply_calls, 0);
  // A redelivery agrees on the due time (the jitter belongs to the event).
  clock_.Advance(milliseconds(100));
  auto again = Run({FromLetter(dl)});
  ASSERT_TRUE(IsNak(again[0]));
  EXPECT_EQ(again[0].delay, first[0].delay - milliseconds(100));
  clock_.Advance(first[0].delay);
  auto due = Run({FromLetter(dl)});
  EXPECT_TRUE(IsAck(due[0]));
  EXPECT_EQ(store_.Column("acme", handlers::Table::kChats, "chat_id=c1", "push_name"), "Ann");
}

TEST_F(DlqHandlerTest, AnUpdateWhoseRowIsStillMissingAfterTheGraceEndsAsNotFoundAfterGrace) {
  const std::string update = R"({"chat_id":"c9","unread_count":1})";
  DeadLetter dl = Retryable(5, update, 1);
  dl.source_subject = "v1.chats.update.acme";
  dl.reason = "retries_exhausted: target row (chat_id=c9) missing after 20 deliveries";
  // Failed first 2 s ago: still inside the 6 s window. The retry finds no row and comes back
  // when the window is over.
  dl.first_failed_ms = clock_.UnixMillis() - 2000;
  dl.last_failed_ms = clock_.UnixMillis() - 1000;
  ASSERT_TRUE(IsAck(Run({FromLetter(dl)})[0]));
  ASSERT_EQ(sink_.published.size(), 1u);
  DeadLetter next = sink_.published[0];
  EXPECT_EQ(next.attempts, 2);
  EXPECT_GE(next.not_before_ms, dl.first_failed_ms + config_->ordering_grace.count());
  EXPECT_EQ(exhausted_.size(), 0u);
  // Due: the row is still missing, the window is over: final, not retried again.
  clock_.Advance(milliseconds(next.not_before_ms - clock_.UnixMillis()));
  sink_.published.clear();
  ASSERT_TRUE(IsAck(Run({FromLetter(next)})[0]));
  EXPECT_TRUE(sink_.published.empty());
  ASSERT_EQ(exhausted_.size(), 1u);
  const auto row = exhausted_.Rows()[0];
  EXPECT_EQ(row.reason.rfind("not_found_after_grace: ", 0), 0u) << row.reason;
  EXPECT_NE(row.reason.find("chat_id=c9"), std::string::npos) << row.reason;
  EXPECT_EQ(row.letter.error_class, ErrorClass::kFatal);
  EXPECT_EQ(row.letter.attempts, 3);
}

TEST_F(DlqHandlerTest, LooksForAMissingRowUntilTheGraceEndsWhateverDlqMaxAttempts) {
  // The processor hands over updates whose rows are missing when too many wait already;
  // DLQ_MAX_ATTEMPTS=1 leaves the worker no retry of its own, but a look for a row inside
  // the window is not a failed attempt (SPEC §11).
  config_->dlq_max_attempts = 1;
  auto waiting = [&](uint64_t seq, const std::string& chat) {
    DeadLetter dl = Retryable(seq, R"({"chat_id":")" + chat + R"(","unread_count":5})");
    dl.source_subject = "v1.chats.update.acme";
    dl.reason = "retries_exhausted: target row (chat_id=" + chat +
                ") missing; 2 events already wait for their rows here (a quarter of "
                "MAX_ACK_PENDING): handed to the DLQ worker";
    dl.waiting_for_row = "chat_id=" + chat;
    dl.first_failed_ms = dl.last_failed_ms = clock_.UnixMillis() - 1000;
    return dl;
  };
  ASSERT_TRUE(IsAck(Run({FromLetter(waiting(10, "c8")), FromLetter(waiting(11, "c9"))})[0]));
  EXPECT_EQ(exhausted_.size(), 0u) << exhausted_.Rows()[0].reason;
  ASSERT_EQ(sink_.published.size(), 2u);
  std::vector<DeadLetter> next = sink_.published;
  for (const DeadLetter& dl : next) {
    EXPECT_EQ(dl.attempts, 2);
    EXPECT_EQ(dl.waiting_for_row.rfind("chat_id=c", 0), 0u);
    EXPECT_GE(dl.not_before_ms, dl.first_failed_ms + config_->ordering_grace.count());
  }
  // c9's row arrives inside the window (an upsert retried by the worker).
  config_->dlq_max_attempts = 5;
  ASSERT_TRUE(IsAck(Run({FromLetter(
      Retryable(6, R"({"chat_id":"c9","jid":"j","phone_number":"+1","push_name":"Ann"})"))})[0]));
  ASSERT_NE(store_.Row("acme", handlers::Table::kChats, "chat_id=c9"), nullptr);
  config_->dlq_max_attempts = 1;
  sink_.published.clear();
  // At the window's end: c9's update is applied, c8's row never came.
  clock_.Advance(milliseconds(next[1].not_before_ms - clock_.UnixMillis()));
  auto d = Run({FromLetter(next[0]), FromLetter(next[1])});
  EXPECT_TRUE(IsAck(d[0]) && IsAck(d[1]));
  EXPECT_TRUE(sink_.published.empty());
  EXPECT_EQ(store_.Column("acme", handlers::Table::kChats, "chat_id=c9", "unread_count"), "5");
  ASSERT_EQ(exhausted_.size(), 1u);
  const auto row = exhausted_.Rows()[0];
  EXPECT_EQ(row.reason.rfind("not_found_after_grace: target row (chat_id=c8)", 0), 0u)
      << row.reason;
  EXPECT_EQ(row.letter.error_class, ErrorClass::kFatal);
}

TEST_F(DlqHandlerTest, ReschedulesAFailedRetryWithOneMoreAttemptAndABackoff) {
  store_.retry_key = std::make_pair(std::string("acme"), std::string("chat_id=c1"));
  const DeadLetter dl = Retryable(5, kChat, 1);
  auto d = Run({FromLetter(dl)});
  EXPECT_TRUE(IsAck(d[0])) << "the rescheduled letter is durable in the DLQ stream";
  ASSERT_EQ(sink_.published.size(), 1u);
  const DeadLetter& next = sink_.published[0];
  EXPECT_EQ(next.attempts, 2);
  EXPECT_EQ(next.error_class, ErrorClass::kRetryable);
  EXPECT_TRUE(next.original == dl.original);
  EXPECT_EQ(next.IdempotencyKey(), dl.IdempotencyKey());
  EXPECT_NE(next.DlqMsgId(), dl.DlqMsgId());
  EXPECT_GE(next.not_before_ms, clock_.UnixMillis() + (config_->dlq_base_delay / 2).count());
  EXPECT_LE(next.not_before_ms, clock_.UnixMillis() + config_->dlq_max_delay.count());
  EXPECT_EQ(exhausted_.size(), 0u);
}

TEST_F(DlqHandlerTest, NaksWhenARescheduledLetterCannotBePublished) {
  store_.retry_key = std::make_pair(std::string("acme"), std::string("chat_id=c1"));
  sink_.fail = true;
  auto d = Run({FromLetter(Retryable(5, kChat, 1))});
  EXPECT_TRUE(IsNak(d[0])) << "never ack before the next attempt is durable";
  EXPECT_EQ(exhausted_.size(), 0u);
}

TEST_F(DlqHandlerTest, ExhaustsARetryableDeadLetterAtMaxAttempts) {
  store_.retry_key = std::make_pair(std::string("acme"), std::string("chat_id=c1"));
  const DeadLetter dl = Retryable(5, kChat, config_->dlq_max_attempts - 1);
  auto d = Run({FromLetter(dl)});
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_TRUE(sink_.published.empty());
  ASSERT_EQ(exhausted_.size(), 1u);
  const auto row = exhausted_.Rows()[0];
  EXPECT_EQ(row.reason.rfind("retries_exhausted: ", 0), 0u) << row.reason;
  EXPECT_EQ(row.letter.attempts, config_->dlq_max_attempts);
  EXPECT_EQ(row.letter.error_class, ErrorClass::kRetryable);
  EXPECT_TRUE(row.letter.original == kChat);
  EXPECT_EQ(row.letter.IdempotencyKey(), dl.IdempotencyKey());
}

TEST_F(DlqHandlerTest, ALetterOfAnEventExhaustedAlreadyIsNotAppliedAgain) {
  // A worker recorded the event at its last attempt and was killed before acking the letter;
  // JetStream delivers that letter again once the database has healed. So does a letter
  // whose successor (the rescheduled attempt) was exhausted before the old one came back.
  store_.retry_key = std::make_pair(std::string("acme"), std::string("chat_id=c1"));
  const DeadLetter last = Retryable(5, kChat, config_->dlq_max_attempts - 1);
  ASSERT_TRUE(IsAck(Run({FromLetter(last)})[0]));
  ASSERT_EQ(exhausted_.size(), 1u);
  store_.retry_key.reset();
  InboundMessage again = FromLetter(last);
  again.delivered = 2;
  const DeadLetter older = Retryable(5, kChat, 1);
  auto d = Run({again, FromLetter(older)});
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_TRUE(IsAck(d[1]));
  EXPECT_EQ(store_.RowCount("acme", handlers::Table::kChats), 0u)
      << "the event is exhausted: it must not be applied as well";
  EXPECT_EQ(exhausted_.size(), 1u);
  EXPECT_TRUE(sink_.published.empty()) << "and not rescheduled either";
  const std::string text = observability::Serialize(metrics_.registry());
  EXPECT_NE(text.find(R"(evp_dlq_messages_total{outcome="duplicate"} 2)"), std::string::npos)
      << text;
}

TEST_F(DlqHandlerTest, NaksALetterWhenTheExhaustedEventsCannotBeRead) {
  exhausted_.fail_transiently = true;
  auto d = Run({FromLetter(Retryable(5, kChat, 1)), FromLetter(Retryable(6, kChat, 1))});
  EXPECT_TRUE(IsNak(d[0]));
  EXPECT_TRUE(IsNak(d[1]));
  EXPECT_EQ(exhausted_.lookups, 1) << "the rest of the batch waits for the database";
  EXPECT_EQ(store_.apply_calls, 0);
  EXPECT_TRUE(handler_->StoreUnavailable());
}

TEST_F(DlqHandlerTest, RecordsARetriedEventThatNowFailsForGoodWithItsAttempts) {
  store_.fatal_key = std::make_pair(std::string("acme"), std::string("chat_id=c1"));
  const DeadLetter dl = Retryable(5, kChat, 2);
  auto d = Run({FromLetter(dl)});
  EXPECT_TRUE(IsAck(d[0]));
  ASSERT_EQ(exhausted_.size(), 1u);
  const auto row = exhausted_.Rows()[0];
  EXPECT_EQ(row.reason.rfind("constraint_violation: ", 0), 0u) << row.reason;
  EXPECT_EQ(row.letter.attempts, 3);
  EXPECT_EQ(row.letter.first_failed_ms, dl.first_failed_ms);
  EXPECT_EQ(row.letter.IdempotencyKey(), dl.IdempotencyKey());
}

TEST_F(DlqHandlerTest, SpendsNoAttemptWhileTheDatabaseIsDown) {
  store_.AddTenant("acme");
  store_.fail_transiently = true;
  const DeadLetter dl = Retryable(5, kChat, 3);
  auto d = Run({FromLetter(dl), FromLetter(Retryable(6, kChat, 1))});
  EXPECT_TRUE(IsNak(d[0]));
  EXPECT_TRUE(IsNak(d[1]));
  EXPECT_TRUE(handler_->StoreUnavailable());
  EXPECT_TRUE(sink_.published.empty()) << "no attempt is counted during an outage";
  EXPECT_EQ(exhausted_.size(), 0u);
  EXPECT_EQ(store_.apply_calls, 1) << "the rest of the batch waits untouched";
}

TEST_F(DlqHandlerTest, NaksTheBatchUntouchedWhileTheStoreIsDown) {
  exhausted_.fail_transiently = true;
  auto d = Run({FromLetter(Letter(1)), FromLetter(Letter(2)), FromLetter(Letter(3))});
  for (const auto& x : d) {
    EXPECT_TRUE(IsNak(x));
    EXPECT_GE(x.delay, config_->dlq_base_delay / 2);
    EXPECT_LE(x.delay, config_->dlq_max_delay);
  }
  EXPECT_TRUE(handler_->StoreUnavailable());
  EXPECT_EQ(exhausted_.calls, 1) << "the rest of the batch must not be tried";
  EXPECT_EQ(exhausted_.size(), 0u);

  exhausted_.fail_transiently = false;
  d = Run({FromLetter(Letter(1)), FromLetter(Letter(2)), FromLetter(Letter(3))});
  for (const auto& x : d) EXPECT_TRUE(IsAck(x));
  EXPECT_FALSE(handler_->StoreUnavailable());
  EXPECT_EQ(exhausted_.size(), 3u);
}

TEST_F(DlqHandlerTest, AcksWhatWasRecordedBeforeTheStoreWentDown) {
  ASSERT_TRUE(IsAck(Run({FromLetter(Letter(1))})[0]));
  exhausted_.fail_transiently = true;
  auto d = Run({FromLetter(Letter(2)), FromLetter(Letter(3))});
  EXPECT_TRUE(IsNak(d[0]));
  EXPECT_TRUE(IsNak(d[1]));
  EXPECT_EQ(exhausted_.size(), 1u);
}

TEST_F(DlqHandlerTest, CountsExhaustedEventsAndDuplicatesInMetrics) {
  const DeadLetter dl = Letter(3);
  Run({FromLetter(dl), FromLetter(dl)});
  const std::string text = observability::Serialize(metrics_.registry());
  EXPECT_NE(text.find(R"(evp_exhausted_total{class="fatal",reason="schema_violation"} 1)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(evp_dlq_messages_total{outcome="duplicate"} 1)"), std::string::npos)
      << text;
}

TEST(DeadLetterFromMessage, DecodesAWellFormedDlqMessage) {
  DeadLetter dl = Letter(77);
  dl.item_index = 4;
  InboundMessage msg;
  msg.subject = "v1.dlq.acme";
  msg.data = dl.original;
  msg.headers = EncodeDeadLetterHeaders(dl);
  const DeadLetter back = DeadLetterFromMessage(msg, 123);
  EXPECT_EQ(back.reason, dl.reason);
  EXPECT_EQ(back.IdempotencyKey(), dl.IdempotencyKey());
  EXPECT_EQ(back.first_failed_ms, dl.first_failed_ms) << "times come from the headers";
}

TEST(DeadLetterFromMessage, StampsUndecodableMessagesWithTheGivenTime) {
  InboundMessage msg;
  msg.subject = "v1.dlq.acme";
  msg.data = "x";
  msg.stream = "EVENTS_DLQ";
  msg.stream_seq = 5;
  const DeadLetter dl = DeadLetterFromMessage(msg, 1234);
  EXPECT_EQ(dl.first_failed_ms, 1234);
  EXPECT_EQ(dl.last_failed_ms, 1234);
  EXPECT_EQ(dl.Code(), ReasonCode::kMalformedJson);
  EXPECT_EQ(dl.source_stream, "EVENTS_DLQ");
  EXPECT_EQ(dl.stream_seq, 5u);
}

}  // namespace
}  // namespace evp::dlq
