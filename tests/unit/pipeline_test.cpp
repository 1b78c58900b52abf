// BatchProcessor against in-memory fakes of its ports: the processing promise of SPEC §6 and
// the decided edge cases of SPEC §11. Every event ends applied, skipped as stale, or dead-
// lettered with its exact bytes; nothing is acked without a durable outcome.
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "observability/metrics.hpp"
#include "pipeline/batch_processor.hpp"
#include "unit/fakes.hpp"
#include "validation/schema_registry.hpp"

namespace evp::pipeline {
namespace {

using evp::testing::FakeClock;
using evp::testing::FakeRow;
using evp::testing::InMemoryEventStore;
using evp::testing::InMemoryExhaustedStore;
using evp::testing::RecordingDeadLetterSink;
using handlers::Table;
using std::chrono::milliseconds;
using Env = std::map<std::string, std::string>;

constexpr uint64_t kSeed = 20240611;

// Bodies of every realtime type (timestamps before the fake clock's now, 1700000000).
const std::string kChatUpsert =
    R"({"chat_id":"c1","jid":"5511@s.whatsapp.net","phone_number":"+5511","push_name":"Ann",)"
    R"("conversation_timestamp":1699999000})";
const std::string kChatUpdate =
    R"({"chat_id":"c1","unread_count":3,"conversation_timestamp":1699999100})";
const std::string kMessageUpsert =
    R"({"message_id":"m1","chat_id":"c1","jid":"j","flow":"OUT","message_text":"hi",)"
    R"("message_timestamp":1699999000})";
const std::string kMessageUpdate = R"({"message_id":"m1","status":"read","timestamp":1699999100})";
const std::string kContactUpsert = R"({"agent_id":"a1","phone_number":"+5511","push_name":"Ann"})";
const std::string kContactUpdate = R"({"agent_id":"a1","phone_number":"+5511","notes":"vip"})";
const std::string kConnectionUpdate = R"({"agent_id":"a1","status":"connected"})";

std::string Chat(const std::string& id, int64_t ts, const std::string& name) {
  return R"({"chat_id":")" + id + R"(","jid":"j","phone_number":"+1","push_name":")" + name +
         R"(","conversation_timestamp":)" + std::to_string(ts) + "}";
}

class Pipeline : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    spdlog::set_level(spdlog::level::off);  // dead letters log warnings; keep output readable
    auto r = validation::SchemaRegistry::LoadEmbedded();
    ASSERT_TRUE(r.ok()) << r.error();
    schemas_ = new validation::SchemaRegistry(std::move(r).value());
  }
  static void TearDownTestSuite() {
    delete schemas_;
    schemas_ = nullptr;
    spdlog::set_level(spdlog::level::info);
  }

  void SetUp() override { Configure({}); }

  // Rebuilds the processor with POSTGRES_DSN plus `extra` settings.
  void Configure(const Env& extra) {
    Env env = {{"POSTGRES_DSN", "postgresql://test@localhost/test"}};
    for (const auto& [k, v] : extra) env[k] = v;
    auto cfg = Config::FromEnvironment(Binary::kProcessor,
                                       [env](const std::string& k) -> std::optional<std::string> {
                                         auto it = env.find(k);
                                         if (it == env.end()) return std::nullopt;
                                         return it->second;
                                       });
    ASSERT_TRUE(cfg.ok());
    processor_.reset();
    config_ = std::make_unique<Config>(std::move(cfg).value());
    processor_ = std::make_unique<BatchProcessor>(*config_, *schemas_, store_, sink_, exhausted_,
                                                  clock_, metrics_, kSeed);
  }

  InboundMessage Msg(const std::string& subject, const std::string& data) {
    InboundMessage m;
    m.subject = subject;
    m.data = data;
    m.stream = subject.rfind("v1.history.", 0) == 0 ? "EVENTS_HISTORY" : "EVENTS_REALTIME";
    m.stream_seq = next_seq_++;
    m.msg_id = "pub-" + std::to_string(m.stream_seq);
    m.delivered = 1;
    m.publish_time_ns = clock_.UnixMillis() * 1'000'000;
    return m;
  }

  std::vector<Decision> Run(const std::vector<InboundMessage>& batch) {
    auto decisions = processor_->Process(batch);
    EXPECT_EQ(decisions.size(), batch.size());
    return decisions;
  }
  Decision RunOne(const InboundMessage& msg) {
    auto d = Run({msg});
    return d.empty() ? Decision::Nak(milliseconds(0)) : d[0];
  }

  // The message redelivered by JetStream.
  static InboundMessage Again(InboundMessage m) {
    ++m.delivered;
    return m;
  }

  static bool IsAck(const Decision& d) { return d.kind == Decision::Kind::kAck; }
  static bool IsNak(const Decision& d) { return d.kind == Decision::Kind::kNak; }

  static validation::SchemaRegistry* schemas_;
  observability::Metrics metrics_{"test"};
  InMemoryEventStore store_;
  RecordingDeadLetterSink sink_;
  InMemoryExhaustedStore exhausted_;
  FakeClock clock_;
  std::unique_ptr<Config> config_;
  std::unique_ptr<BatchProcessor> processor_;
  uint64_t next_seq_ = 1;
};
validation::SchemaRegistry* Pipeline::schemas_ = nullptr;

// ---------------------------------------------------------------------------------------------
// Valid events

TEST_F(Pipeline, AppliesAValidEventOfEveryRealtimeType) {
  struct Case {
    std::string subject;
    std::string body;
    std::string setup_subject;  // an event that creates the row an update needs
    std::string setup_body;
    Table table;
    std::string key;
    std::string column;
    std::string value;
  };
  const std::vector<Case> cases = {
      {"v1.chats.upsert.acme", kChatUpsert, "", "", Table::kChats, "chat_id=c1", "push_name",
       "Ann"},
      {"v1.chats.update.acme", kChatUpdate, "v1.chats.upsert.acme", kChatUpsert, Table::kChats,
       "chat_id=c1", "unread_count", "3"},
      {"v1.messages.upsert.acme", kMessageUpsert, "", "", Table::kMessages, "message_id=m1",
       "message_text", "hi"},
      {"v1.messages.update.acme", kMessageUpdate, "v1.messages.upsert.acme", kMessageUpsert,
       Table::kMessages, "message_id=m1", "status", "read"},
      {"v1.contacts.upsert.acme", kContactUpsert, "", "", Table::kContacts,
       "agent_id=a1,phone_number=+5511", "push_name", "Ann"},
      {"v1.contacts.update.acme", kContactUpdate, "v1.contacts.upsert.acme", kContactUpsert,
       Table::kContacts, "agent_id=a1,phone_number=+5511", "notes", "vip"},
      {"v1.connection.update.acme", kConnectionUpdate, "", "", Table::kAgents, "agent_id=a1",
       "status", "connected"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.subject);
    store_ = InMemoryEventStore{};
    sink_.published.clear();
    if (!c.setup_subject.empty()) {
      ASSERT_TRUE(IsAck(RunOne(Msg(c.setup_subject, c.setup_body))));
    }
    Decision d = RunOne(Msg(c.subject, c.body));
    EXPECT_TRUE(IsAck(d));
    EXPECT_EQ(processor_->last_stats().applied, 1u);
    EXPECT_FALSE(processor_->StoreUnavailable());
    EXPECT_EQ(store_.Column("acme", c.table, c.key, c.column), c.value);
    EXPECT_EQ(store_.Column("acme", c.table, c.key, "company_id"), "acme");
    EXPECT_TRUE(sink_.published.empty());
  }
  EXPECT_EQ(exhausted_.size(), 0u);
}

TEST_F(Pipeline, TakesAMissingPayloadCompanyIdFromTheSubject) {
  ASSERT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.Acme_2", kChatUpsert))));
  EXPECT_TRUE(store_.HasTenant("Acme_2"));
  EXPECT_EQ(store_.Column("Acme_2", Table::kChats, "chat_id=c1", "company_id"), "Acme_2");
}

TEST_F(Pipeline, AcceptsAPayloadCompanyIdEqualToTheSubjects) {
  const std::string body = R"({"chat_id":"c1","jid":"j","phone_number":"+1","company_id":"acme"})";
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", body))));
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 1u);
  EXPECT_TRUE(sink_.published.empty());
}

TEST_F(Pipeline, WritesABatchOfSeveralTenantsToEachTenant) {
  auto d = Run({Msg("v1.chats.upsert.acme", Chat("c1", 1699999000, "A")),
                Msg("v1.chats.upsert.beta", Chat("c1", 1699999000, "B")),
                Msg("v1.chats.upsert.acme", Chat("c2", 1699999000, "A2"))});
  for (const auto& x : d) EXPECT_TRUE(IsAck(x));
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 2u);
  EXPECT_EQ(store_.RowCount("beta", Table::kChats), 1u);
  EXPECT_EQ(store_.Column("beta", Table::kChats, "chat_id=c1", "push_name"), "B");
}

TEST_F(Pipeline, AcksAnEmptyBatch) {
  EXPECT_TRUE(Run({}).empty());
  EXPECT_EQ(store_.apply_calls, 0);
}

// ---------------------------------------------------------------------------------------------
// Fatal input: one dead letter, exact bytes, ack, nothing written

struct FatalCase {
  std::string name;
  std::string subject;
  std::string body;
  ReasonCode code;
  std::string company_id;
};

std::string TooLargeBody() {
  std::string body = R"({"chat_id":"c1","jid":"j","phone_number":"+1","push_name":")";
  body += std::string(921600 - body.size(), 'x');
  body += R"("})";
  return body;  // 921602 bytes: valid JSON, just over MAX_EVENT_BYTES
}

std::vector<FatalCase> FatalCases() {
  const std::string valid = R"({"chat_id":"c1","jid":"j","phone_number":"+1"})";
  return {
      {"malformed json", "v1.chats.upsert.acme", R"({"chat_id":"c1",)", ReasonCode::kMalformedJson,
       "acme"},
      {"empty body", "v1.chats.upsert.acme", "", ReasonCode::kMalformedJson, "acme"},
      {"whitespace body", "v1.chats.upsert.acme", " \r\n\t ", ReasonCode::kMalformedJson, "acme"},
      {"invalid utf-8", "v1.chats.upsert.acme",
       "{\"chat_id\":\"c\xff\xfe\",\"jid\":\"j\",\"phone_number\":\"+1\"}",
       ReasonCode::kMalformedJson, "acme"},
      {"binary with NUL", "v1.messages.upsert.acme", std::string("\x00\x01\x02{}", 5),
       ReasonCode::kMalformedJson, "acme"},
      {"missing required field", "v1.chats.upsert.acme", R"({"chat_id":"c1","jid":"j"})",
       ReasonCode::kSchemaViolation, "acme"},
      {"unknown field", "v1.chats.upsert.acme",
       R"({"chat_id":"c1","jid":"j","phone_number":"+1","bogus":true})",
       ReasonCode::kSchemaViolation, "acme"},
      {"wrong type", "v1.chats.upsert.acme",
       R"({"chat_id":"c1","jid":"j","phone_number":"+1","unread_count":"3"})",
       ReasonCode::kSchemaViolation, "acme"},
      {"null", "v1.chats.upsert.acme", "null", ReasonCode::kSchemaViolation, "acme"},
      {"array", "v1.chats.upsert.acme", "[]", ReasonCode::kSchemaViolation, "acme"},
      {"number", "v1.chats.upsert.acme", "42", ReasonCode::kSchemaViolation, "acme"},
      {"future timestamp", "v1.chats.upsert.acme",
       R"({"chat_id":"c1","jid":"j","phone_number":"+1","conversation_timestamp":1800000000})",
       ReasonCode::kSchemaViolation, "acme"},
      {"history envelope not an array", "v1.history.chats.acme", R"({"chats":{}})",
       ReasonCode::kSchemaViolation, "acme"},
      {"unknown type", "v1.chats.delete.acme", valid, ReasonCode::kUnknownType, "acme"},
      {"extra token", "v1.chats.upsert.x.acme", valid, ReasonCode::kUnknownType, "acme"},
      {"no tenant token", "v1.chats.upsert", valid, ReasonCode::kUnknownType, ""},
      {"missing token", "v1.chats.acme", valid, ReasonCode::kUnknownType, "acme"},
      {"invalid tenant (leading digit)", "v1.chats.upsert.1acme", valid, ReasonCode::kInvalidTenant,
       "1acme"},
      {"invalid tenant (empty)", "v1.chats.upsert.", valid, ReasonCode::kInvalidTenant, ""},
      {"invalid tenant (too long)", "v1.chats.upsert." + std::string(41, 'a'), valid,
       ReasonCode::kInvalidTenant, std::string(41, 'a')},
      {"tenant mismatch", "v1.chats.upsert.acme",
       R"({"chat_id":"c1","jid":"j","phone_number":"+1","company_id":"beta"})",
       ReasonCode::kTenantMismatch, "acme"},
      {"tenant mismatch by case", "v1.chats.upsert.acme",
       R"({"chat_id":"c1","jid":"j","phone_number":"+1","company_id":"Acme"})",
       ReasonCode::kTenantMismatch, "acme"},
      {"history tenant mismatch", "v1.history.chats.acme",
       R"({"company_id":"beta","chats":[{"chat_id":"c1","jid":"j","phone_number":"+1"}]})",
       ReasonCode::kTenantMismatch, "acme"},
      {"too large", "v1.chats.upsert.acme", TooLargeBody(), ReasonCode::kTooLarge, "acme"},
  };
}

TEST_F(Pipeline, DeadLettersEveryFatalInputOnceWithItsExactBytesAndAcks) {
  for (const auto& c : FatalCases()) {
    SCOPED_TRACE(c.name);
    sink_.published.clear();
    const InboundMessage msg = Msg(c.subject, c.body);
    Decision d = RunOne(msg);
    EXPECT_TRUE(IsAck(d));
    ASSERT_EQ(sink_.published.size(), 1u);
    const DeadLetter& dl = sink_.published[0];
    EXPECT_EQ(dl.Code(), c.code) << dl.reason;
    EXPECT_EQ(dl.reason.rfind(std::string(ReasonCodeName(c.code)) + ": ", 0), 0u) << dl.reason;
    EXPECT_GT(dl.reason.size(), ReasonCodeName(c.code).size() + 2) << "reason needs a message";
    EXPECT_EQ(dl.error_class, ErrorClass::kFatal);
    EXPECT_EQ(dl.original.size(), c.body.size());
    EXPECT_TRUE(dl.original == c.body) << "original bytes changed";
    EXPECT_EQ(dl.attempts, 1);
    EXPECT_EQ(dl.company_id, c.company_id);
    EXPECT_EQ(dl.source_subject, c.subject);
    EXPECT_EQ(dl.source_stream, msg.stream);
    EXPECT_EQ(dl.stream_seq, msg.stream_seq);
    EXPECT_EQ(dl.orig_msg_id, msg.msg_id);
    EXPECT_EQ(dl.published_ns, msg.publish_time_ns) << "the DLQ worker replays with it";
    EXPECT_FALSE(dl.item_index.has_value());
    EXPECT_EQ(dl.first_failed_ms, clock_.UnixMillis());
    EXPECT_EQ(dl.last_failed_ms, clock_.UnixMillis());
    EXPECT_EQ(store_.TotalRows(), 0u);
    EXPECT_EQ(processor_->last_stats().dead_lettered, 1u);
    EXPECT_FALSE(processor_->StoreUnavailable());
  }
  EXPECT_EQ(exhausted_.size(), 0u);
  EXPECT_FALSE(store_.HasTenant("beta")) << "a mismatched payload tenant must not be created";
  EXPECT_FALSE(store_.HasTenant("1acme"));
}

TEST_F(Pipeline, WritesNothingToEitherTenantOnMismatch) {
  ASSERT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.beta", Chat("c0", 1699999000, "B")))));
  const std::string body = R"({"chat_id":"c1","jid":"j","phone_number":"+1","company_id":"beta"})";
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", body))));
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 0u);
  EXPECT_EQ(store_.RowCount("beta", Table::kChats), 1u);
  EXPECT_EQ(store_.Row("beta", Table::kChats, "chat_id=c1"), nullptr);
  ASSERT_EQ(sink_.published.size(), 1u);
  EXPECT_EQ(sink_.published[0].company_id, "acme");
}

TEST_F(Pipeline, IsolatesAPoisonEventFromItsNeighbours) {
  auto d = Run({Msg("v1.chats.upsert.acme", Chat("c1", 1699999000, "A")),
                Msg("v1.chats.upsert.acme", "{not json"),
                Msg("v1.chats.upsert.1bad", Chat("c9", 1699999000, "X")),
                Msg("v1.chats.upsert.acme", Chat("c2", 1699999000, "B"))});
  for (const auto& x : d) EXPECT_TRUE(IsAck(x));
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 2u);
  EXPECT_EQ(sink_.published.size(), 2u);
  EXPECT_EQ(processor_->last_stats().applied, 2u);
  EXPECT_EQ(processor_->last_stats().dead_lettered, 2u);
}

TEST_F(Pipeline, CountsDeadLettersByReasonWithoutTenantLabels) {
  RunOne(Msg("v1.chats.upsert.acme", "{"));
  const std::string text = observability::Serialize(metrics_.registry());
  EXPECT_NE(text.find(R"(evp_dead_letters_total{class="fatal",reason="malformed_json"} 1)"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("company_id=\"acme\""), std::string::npos);
}

TEST_F(Pipeline, CountsEachEventTheDatabaseRefusesAsAFatalDatabaseError) {
  store_.fatal_key = std::make_pair(std::string("acme"), std::string("chat_id=c5"));
  const std::string body = R"({"chats":[)" + Chat("c5", 1699999000, "H") + "]}";
  Run({Msg("v1.chats.upsert.acme", Chat("c5", 1699999000, "E")), Msg("v1.history.chats.acme", body),
       Msg("v1.chats.upsert.acme", Chat("c1", 1699999000, "A"))});
  ASSERT_EQ(sink_.published.size(), 2u);
  const std::string text = observability::Serialize(metrics_.registry());
  EXPECT_NE(text.find(R"(evp_db_errors_total{class="fatal"} 2)"), std::string::npos) << text;
  EXPECT_NE(text.find(R"(evp_db_errors_total{class="transient"} 0)"), std::string::npos) << text;
}

// ---------------------------------------------------------------------------------------------
// Where dead letters go

TEST_F(Pipeline, RecordsADeadLetterTooLargeForTheDlqDirectlyInTheExhaustedStore) {
  RecordingDeadLetterSink small_sink(16 * 1024);
  processor_ = std::make_unique<BatchProcessor>(*config_, *schemas_, store_, small_sink, exhausted_,
                                                clock_, metrics_, kSeed);
  const std::string body = "{" + std::string(12 * 1024, 'x');  // malformed, 12 KiB
  const InboundMessage msg = Msg("v1.chats.upsert.acme", body);
  EXPECT_TRUE(IsAck(RunOne(msg)));
  EXPECT_TRUE(small_sink.published.empty());
  ASSERT_EQ(exhausted_.size(), 1u);
  const auto row = exhausted_.Rows()[0];
  EXPECT_TRUE(row.letter.original == body);
  EXPECT_EQ(row.letter.Code(), ReasonCode::kMalformedJson);
  EXPECT_EQ(row.reason.rfind("malformed_json: ", 0), 0u) << row.reason;
  EXPECT_EQ(row.letter.company_id, "acme");
  EXPECT_EQ(row.letter.stream_seq, msg.stream_seq);
}

TEST_F(Pipeline, NaksWhenAnOversizedDeadLetterCannotBeRecorded) {
  RecordingDeadLetterSink small_sink(16 * 1024);
  processor_ = std::make_unique<BatchProcessor>(*config_, *schemas_, store_, small_sink, exhausted_,
                                                clock_, metrics_, kSeed);
  exhausted_.fail_transiently = true;
  EXPECT_TRUE(IsNak(RunOne(Msg("v1.chats.upsert.acme", "{" + std::string(12 * 1024, 'x')))));
  EXPECT_EQ(exhausted_.size(), 0u);
}

TEST_F(Pipeline, PublishesTheDeadLettersOfABatchTogetherAndRedeliversOnlyTheOneThatFailed) {
  // A burst of invalid events costs one round trip to JetStream for the lot; a dead letter
  // that was not stored leaves only its own event unacknowledged.
  sink_.fail_when_original_contains = "poison-2";
  const std::string history_body =
      R"({"chats":[)" + Chat("h1", 1699999000, "H") + R"(,{"chat_id":"h2","note":"poison-3"}]})";
  auto d = Run({Msg("v1.chats.upsert.acme", Chat("c1", 1699999000, "A")),
                Msg("v1.chats.upsert.acme", "{poison-1"), Msg("v1.chats.upsert.acme", "{poison-2"),
                Msg("v1.chats.upsert.acme", R"({"chat_id":"c9"})"),
                Msg("v1.history.chats.acme", history_body),
                Msg("v1.chats.upsert.acme", Chat("c2", 1699999000, "B"))});
  EXPECT_EQ(sink_.publish_all_sizes, std::vector<size_t>{4})
      << "the four dead letters (three events, one history item) go out in one call";
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_TRUE(IsAck(d[1]));
  EXPECT_TRUE(IsNak(d[2])) << "its dead letter was not stored";
  EXPECT_TRUE(IsAck(d[3]));
  EXPECT_TRUE(IsAck(d[4])) << "the history event: its valid item written, its bad one stored";
  EXPECT_TRUE(IsAck(d[5]));
  ASSERT_EQ(sink_.published.size(), 3u);
  EXPECT_EQ(sink_.published[0].original, "{poison-1");
  EXPECT_EQ(sink_.published[1].original, R"({"chat_id":"c9"})");
  EXPECT_EQ(sink_.published[2].item_index, std::optional<int64_t>(1));
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 3u);
  EXPECT_EQ(processor_->last_stats().dead_lettered, 3u);
  EXPECT_EQ(processor_->last_stats().retried, 1u);
}

TEST_F(Pipeline, DecidesEachDeadLetterOfABatchWhetherRecordedDirectlyOrPublished) {
  // Oversized dead letters are recorded directly, the others published together: each
  // outcome must land on its own event.
  RecordingDeadLetterSink small_sink(16 * 1024);
  small_sink.fail_when_original_contains = "poison-b";
  processor_ = std::make_unique<BatchProcessor>(*config_, *schemas_, store_, small_sink, exhausted_,
                                                clock_, metrics_, kSeed);
  const std::string big = "{" + std::string(12 * 1024, 'x');  // malformed, 12 KiB
  auto d =
      Run({Msg("v1.chats.upsert.acme", "{poison-a"), Msg("v1.chats.upsert.acme", big),
           Msg("v1.chats.upsert.acme", "{poison-b"), Msg("v1.chats.upsert.acme", "{poison-c")});
  EXPECT_EQ(small_sink.publish_all_sizes, std::vector<size_t>{3});
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_TRUE(IsAck(d[1])) << "recorded in exhausted_events";
  EXPECT_TRUE(IsNak(d[2])) << "its dead letter was not stored";
  EXPECT_TRUE(IsAck(d[3]));
  ASSERT_EQ(exhausted_.size(), 1u);
  EXPECT_TRUE(exhausted_.Rows()[0].letter.original == big);
  ASSERT_EQ(small_sink.published.size(), 2u);
  EXPECT_EQ(small_sink.published[0].original, "{poison-a");
  EXPECT_EQ(small_sink.published[1].original, "{poison-c");
}

TEST_F(Pipeline, PublishesTheDeadLettersDecidedWhileWritingTogether) {
  // Updates whose row never came and events the database refuses are dead-lettered after
  // the write: a flood of them must not cost one JetStream round trip each either.
  const std::string lost_1 = R"({"chat_id":"lost-1","unread_count":1})";
  const std::string lost_2 = R"({"chat_id":"lost-2","unread_count":2})";
  InboundMessage u1 = Msg("v1.chats.update.acme", lost_1);
  InboundMessage u2 = Msg("v1.chats.update.acme", lost_2);
  auto d = Run({u1, u2});
  ASSERT_TRUE(IsNak(d[0]) && IsNak(d[1])) << "not yet: inside the ordering grace";
  clock_.Advance(milliseconds(7000));  // the 6 s grace is over

  store_.fatal_key = std::make_pair(std::string("acme"), std::string("chat_id=c5"));
  sink_.fail_when_original_contains = "lost-2";
  d = Run({Again(u1), Again(u2), Msg("v1.chats.upsert.acme", Chat("c5", 1699999000, "E")),
           Msg("v1.chats.upsert.acme", Chat("c1", 1699999000, "A"))});
  EXPECT_EQ(sink_.publish_all_sizes, std::vector<size_t>{3})
      << "two not_found_after_grace and one constraint_violation in one call";
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_TRUE(IsNak(d[1])) << "its dead letter was not stored";
  EXPECT_TRUE(IsAck(d[2]));
  EXPECT_TRUE(IsAck(d[3]));
  ASSERT_EQ(sink_.published.size(), 2u);
  EXPECT_EQ(sink_.published[0].Code(), ReasonCode::kNotFoundAfterGrace);
  EXPECT_TRUE(sink_.published[0].original == lost_1);
  EXPECT_EQ(sink_.published[1].Code(), ReasonCode::kConstraintViolation);
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 1u);
  EXPECT_EQ(processor_->last_stats().applied, 1u);
  EXPECT_EQ(processor_->last_stats().dead_lettered, 2u);
  EXPECT_EQ(processor_->last_stats().retried, 1u);
}

TEST_F(Pipeline, RedeliversAHistoryEventWhoseRefusedItemCouldNotBeDeadLettered) {
  // A history item the database refuses is dead-lettered alone after the write, together
  // with the batch's other late dead letters; if its letter is not stored, the whole history
  // event comes again (its other items are rewritten idempotently).
  const InboundMessage lost = Msg("v1.chats.update.acme", R"({"chat_id":"lost-1"})");
  ASSERT_TRUE(IsNak(RunOne(lost)));
  clock_.Advance(milliseconds(7000));
  store_.fatal_key = std::make_pair(std::string("acme"), std::string("chat_id=h2"));
  sink_.fail_when_original_contains = R"("h2")";
  const std::string body =
      R"({"chats":[)" + Chat("h1", 1699999000, "H") + "," + Chat("h2", 1699999000, "I") + "]}";
  const InboundMessage history = Msg("v1.history.chats.acme", body);
  auto d = Run({history, Again(lost)});
  EXPECT_EQ(sink_.publish_all_sizes, std::vector<size_t>{2});
  EXPECT_TRUE(IsNak(d[0])) << "its refused item has no durable outcome";
  EXPECT_TRUE(IsAck(d[1]));
  ASSERT_EQ(sink_.published.size(), 1u);
  EXPECT_EQ(sink_.published[0].Code(), ReasonCode::kNotFoundAfterGrace);
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 1u) << "h1 is written";
  EXPECT_EQ(processor_->last_stats().dead_lettered, 1u);

  sink_.fail_when_original_contains.clear();
  d = Run({Again(history)});
  EXPECT_TRUE(IsAck(d[0]));
  ASSERT_EQ(sink_.published.size(), 2u);
  EXPECT_EQ(sink_.published[1].Code(), ReasonCode::kConstraintViolation);
  EXPECT_EQ(sink_.published[1].item_index, std::optional<int64_t>(1));
}

TEST_F(Pipeline, RedeliversAHistoryEventWhoseBadItemCouldNotBeStored) {
  sink_.fail_when_original_contains = "poison";
  const std::string body =
      R"({"chats":[)" + Chat("h1", 1699999000, "H") + R"(,{"chat_id":"h2","note":"poison"}]})";
  Decision d = RunOne(Msg("v1.history.chats.acme", body));
  EXPECT_TRUE(IsNak(d)) << "the bad item has no durable outcome yet";
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 1u) << "the valid item is written (again "
                                                           "on redelivery, idempotently)";
}

TEST_F(Pipeline, NaksWhenTheDlqPublishFails) {
  sink_.fail = true;
  const InboundMessage msg = Msg("v1.chats.upsert.acme", "{broken");
  Decision d = RunOne(msg);
  EXPECT_TRUE(IsNak(d)) << "never ack without a durable outcome";
  EXPECT_GT(d.delay, milliseconds(0));
  EXPECT_LE(d.delay, config_->nak_max_delay);
  EXPECT_EQ(sink_.publish_calls, 1);
  EXPECT_EQ(exhausted_.size(), 0u);

  sink_.fail = false;
  EXPECT_TRUE(IsAck(RunOne(Again(msg))));
  ASSERT_EQ(sink_.published.size(), 1u);
  EXPECT_EQ(sink_.published[0].Code(), ReasonCode::kMalformedJson);
}

TEST_F(Pipeline, NaksWhenTheDlqPublishFailsForAnUnknownType) {
  sink_.fail = true;
  EXPECT_TRUE(IsNak(RunOne(Msg("v1.chats.delete.acme", "{}"))));
  EXPECT_TRUE(IsNak(RunOne(Msg("v1.chats.upsert.*", "{}"))));
}

TEST_F(Pipeline, NaksWhenTheDlqPublishFailsForAConstraintViolation) {
  store_.fatal_key = std::make_pair(std::string("acme"), std::string("chat_id=c1"));
  sink_.fail = true;
  EXPECT_TRUE(IsNak(RunOne(Msg("v1.chats.upsert.acme", kChatUpsert))));
}

// ---------------------------------------------------------------------------------------------
// Transient database errors

TEST_F(Pipeline, NaksWithBackoffAndReportsTheStoreUnavailableOnTransientErrors) {
  ASSERT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", Chat("c0", 1699999000, "A")))));
  store_.fail_transiently = true;
  for (uint64_t delivered = 1; delivered < 20; ++delivered) {
    InboundMessage msg = Msg("v1.chats.upsert.acme", Chat("c1", 1699999000, "A"));
    msg.delivered = delivered;
    Decision d = RunOne(msg);
    ASSERT_TRUE(IsNak(d)) << "delivered " << delivered;
    EXPECT_GE(d.delay, config_->nak_base_delay / 2) << "delivered " << delivered;
    EXPECT_LE(d.delay, config_->nak_max_delay) << "delivered " << delivered;
    EXPECT_TRUE(processor_->StoreUnavailable());
  }
  EXPECT_TRUE(sink_.published.empty()) << "an outage must not dead-letter events";
  EXPECT_EQ(exhausted_.size(), 0u);

  store_.fail_transiently = false;
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", Chat("c1", 1699999000, "A")))));
  EXPECT_FALSE(processor_->StoreUnavailable());
}

TEST_F(Pipeline, UsesTheBaseDelayForTheFirstTransientRetry) {
  ASSERT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", Chat("c0", 1699999000, "A")))));
  store_.fail_transiently = true;
  Decision d = RunOne(Msg("v1.chats.upsert.acme", Chat("c1", 1699999000, "A")));
  ASSERT_TRUE(IsNak(d));
  EXPECT_GE(d.delay, config_->nak_base_delay / 2);
  EXPECT_LE(d.delay, config_->nak_base_delay);
}

TEST_F(Pipeline, NaksEventsOfANewTenantWhileTheDatabaseIsDown) {
  store_.fail_transiently = true;
  Decision d = RunOne(Msg("v1.chats.upsert.newco", kChatUpsert));
  EXPECT_TRUE(IsNak(d));
  EXPECT_GE(d.delay, config_->nak_base_delay / 2);
  EXPECT_LE(d.delay, config_->nak_max_delay);
  EXPECT_TRUE(processor_->StoreUnavailable());
  EXPECT_TRUE(sink_.published.empty());
}

TEST_F(Pipeline, KeepsFatalDecisionsOfABatchThatHitATransientError) {
  ASSERT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", Chat("c0", 1699999000, "A")))));
  store_.fail_transiently = true;
  auto d = Run({Msg("v1.chats.upsert.acme", "{bad"),
                Msg("v1.chats.upsert.acme", Chat("c1", 1699999000, "A"))});
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_TRUE(IsNak(d[1]));
  EXPECT_EQ(sink_.published.size(), 1u);
}

TEST_F(Pipeline, ADeadLetterCarriesThePublishersTraceId) {
  InboundMessage msg = Msg("v1.chats.upsert.acme", "{bad");
  msg.headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  ASSERT_TRUE(IsAck(RunOne(msg)));
  ASSERT_EQ(sink_.published.size(), 1u);
  EXPECT_EQ(sink_.published[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", "{bad"))));
  ASSERT_EQ(sink_.published.size(), 2u);
  EXPECT_EQ(sink_.published[1].trace_id, "") << "no header, no trace id";
}

TEST_F(Pipeline, DeadLettersAsRetryableAtMaxDeliverAndAcks) {
  ASSERT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", Chat("c0", 1699999000, "A")))));
  store_.fail_transiently = true;
  InboundMessage msg = Msg("v1.chats.upsert.acme", kChatUpsert);
  msg.delivered = static_cast<uint64_t>(config_->max_deliver);
  EXPECT_TRUE(IsAck(RunOne(msg)));
  ASSERT_EQ(sink_.published.size(), 1u);
  const DeadLetter& dl = sink_.published[0];
  EXPECT_EQ(dl.Code(), ReasonCode::kRetriesExhausted) << dl.reason;
  EXPECT_EQ(dl.error_class, ErrorClass::kRetryable);
  EXPECT_TRUE(dl.original == kChatUpsert);
  EXPECT_EQ(dl.company_id, "acme");
  EXPECT_EQ(dl.stream_seq, msg.stream_seq);
  EXPECT_EQ(dl.published_ns, msg.publish_time_ns);
}

TEST_F(Pipeline, NamesTheDeliveryCountAndLastErrorWhenRetriesAreExhausted) {
  ASSERT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", Chat("c0", 1699999000, "A")))));
  store_.fail_transiently = true;
  InboundMessage msg = Msg("v1.chats.upsert.acme", kChatUpsert);
  msg.delivered = static_cast<uint64_t>(config_->max_deliver);
  ASSERT_TRUE(IsAck(RunOne(msg)));
  ASSERT_EQ(sink_.published.size(), 1u);
  const std::string& reason = sink_.published[0].reason;
  EXPECT_NE(reason.find(std::to_string(config_->max_deliver) + " deliveries"), std::string::npos)
      << reason;
  EXPECT_NE(reason.find("08006"), std::string::npos) << reason;
}

TEST_F(Pipeline, NaksOnlyTheEventWhoseWriteHitATransientErrorOfItsOwn) {
  store_.retry_key = std::make_pair(std::string("acme"), std::string("chat_id=c2"));
  auto d = Run({Msg("v1.chats.upsert.acme", Chat("c1", 1699999000, "One")),
                Msg("v1.chats.upsert.acme", Chat("c2", 1699999000, "Two")),
                Msg("v1.chats.upsert.acme", Chat("c3", 1699999000, "Three"))});
  EXPECT_TRUE(IsAck(d[0]));
  ASSERT_TRUE(IsNak(d[1]));
  EXPECT_GE(d[1].delay, config_->nak_base_delay / 2);
  EXPECT_LE(d[1].delay, config_->nak_max_delay);
  EXPECT_TRUE(IsAck(d[2]));
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 2u);
  EXPECT_TRUE(sink_.published.empty());
  EXPECT_FALSE(processor_->StoreUnavailable()) << "the database is reachable";
}

TEST_F(Pipeline, DeadLettersAsRetryableAnEventStillHittingATransientErrorAtMaxDeliver) {
  store_.retry_key = std::make_pair(std::string("acme"), std::string("chat_id=c1"));
  InboundMessage msg = Msg("v1.chats.upsert.acme", kChatUpsert);
  msg.delivered = static_cast<uint64_t>(config_->max_deliver);
  EXPECT_TRUE(IsAck(RunOne(msg)));
  ASSERT_EQ(sink_.published.size(), 1u);
  EXPECT_EQ(sink_.published[0].Code(), ReasonCode::kRetriesExhausted) << sink_.published[0].reason;
  EXPECT_EQ(sink_.published[0].error_class, ErrorClass::kRetryable);
  EXPECT_TRUE(sink_.published[0].original == kChatUpsert);
}

TEST_F(Pipeline, ARetryableDeadLetterTellsWhenItsEventFirstFailed) {
  store_.retry_key = std::make_pair(std::string("acme"), std::string("chat_id=c1"));
  const InboundMessage msg = Msg("v1.chats.upsert.acme", kChatUpsert);
  const int64_t first_failure_ms = clock_.UnixMillis();
  ASSERT_TRUE(IsNak(RunOne(msg)));
  clock_.Advance(milliseconds(90'000));  // deliveries later, its last one fails too
  InboundMessage last = msg;
  last.delivered = static_cast<uint64_t>(config_->max_deliver);
  EXPECT_TRUE(IsAck(RunOne(last)));
  ASSERT_EQ(sink_.published.size(), 1u);
  EXPECT_EQ(sink_.published[0].Code(), ReasonCode::kRetriesExhausted);
  EXPECT_EQ(sink_.published[0].first_failed_ms, first_failure_ms);
  EXPECT_EQ(sink_.published[0].last_failed_ms, first_failure_ms + 90'000);
}

// ---------------------------------------------------------------------------------------------
// "Not yet": updates of rows that do not exist yet

TEST_F(Pipeline, RetriesAnUpdateOfAMissingRowInsideTheGraceThenDeadLettersIt) {
  const milliseconds grace = config_->ordering_grace;
  ASSERT_EQ(grace, milliseconds(6000));
  const InboundMessage first = Msg("v1.chats.update.acme", kChatUpdate);

  Decision d = RunOne(first);
  ASSERT_TRUE(IsNak(d));
  EXPECT_GT(d.delay, milliseconds(0));
  EXPECT_LE(d.delay, grace);
  EXPECT_FALSE(processor_->StoreUnavailable()) << "not-yet is not an outage";
  EXPECT_TRUE(sink_.published.empty());

  clock_.Advance(milliseconds(3000));
  InboundMessage second = Again(first);
  d = RunOne(second);
  ASSERT_TRUE(IsNak(d));
  EXPECT_LE(d.delay, grace - milliseconds(3000)) << "delay must fit in the remaining grace";
  EXPECT_TRUE(sink_.published.empty());

  clock_.Advance(milliseconds(3000));
  d = RunOne(Again(second));
  EXPECT_TRUE(IsAck(d));
  ASSERT_EQ(sink_.published.size(), 1u);
  const DeadLetter& dl = sink_.published[0];
  EXPECT_EQ(dl.Code(), ReasonCode::kNotFoundAfterGrace) << dl.reason;
  EXPECT_EQ(dl.error_class, ErrorClass::kFatal) << "the DLQ worker must not retry it";
  EXPECT_EQ(dl.last_failed_ms - dl.first_failed_ms, 6000) << "first failure = first try";
  EXPECT_TRUE(dl.original == kChatUpdate);
  EXPECT_EQ(dl.company_id, "acme");
  EXPECT_EQ(dl.stream_seq, first.stream_seq);
  EXPECT_EQ(store_.TotalRows(), 0u);
}

TEST_F(Pipeline, AnUpdatePastItsGraceWhoseDeadLetterFailedDoesNotWaitAgain) {
  // The grace is over once: if the dead letter is not stored, the next delivery is
  // dead-lettered at once, not after another full ORDERING_GRACE of retries.
  const InboundMessage update = Msg("v1.chats.update.acme", kChatUpdate);
  ASSERT_TRUE(IsNak(RunOne(update)));
  clock_.Advance(milliseconds(7000));
  sink_.fail = true;
  const InboundMessage again = Again(update);
  ASSERT_TRUE(IsNak(RunOne(again))) << "its dead letter was not stored";
  sink_.fail = false;
  EXPECT_TRUE(IsAck(RunOne(Again(again))));
  ASSERT_EQ(sink_.published.size(), 1u);
  EXPECT_EQ(sink_.published[0].Code(), ReasonCode::kNotFoundAfterGrace);
  EXPECT_EQ(sink_.published[0].last_failed_ms - sink_.published[0].first_failed_ms, 7000)
      << "the first failure keeps its real time";
}

TEST_F(Pipeline, TimeTheDatabaseWasDownDoesNotCountTowardsTheGrace) {
  // SPEC §11: an outage of any length exhausts nothing, updates waiting for their row
  // included.
  const InboundMessage update = Msg("v1.chats.update.acme", kChatUpdate);
  ASSERT_TRUE(IsNak(RunOne(update)));
  clock_.Advance(milliseconds(2000));
  processor_->DatabaseWasUnavailable(milliseconds(30'000));
  clock_.Advance(milliseconds(33'000));  // 35 s since the first try, 5 s of them counted
  InboundMessage again = Again(update);
  ASSERT_TRUE(IsNak(RunOne(again)));
  EXPECT_TRUE(sink_.published.empty());
  clock_.Advance(milliseconds(1500));  // 6.5 s counted: the window is over
  EXPECT_TRUE(IsAck(RunOne(Again(again))));
  ASSERT_EQ(sink_.published.size(), 1u);
  EXPECT_EQ(sink_.published[0].Code(), ReasonCode::kNotFoundAfterGrace);
  EXPECT_EQ(sink_.published[0].last_failed_ms - sink_.published[0].first_failed_ms, 36'500)
      << "the first failure keeps its real time";
}

TEST_F(Pipeline, AStallOfWritesIsNotOrderingTheGraceStartsOnceTheRowIsFoundMissing) {
  // Writes of a tenant fail for longer than the grace (a lock, a read-only database) while
  // the database answers: the upsert and its update were both caught and come back from
  // their backoffs in any order. The update, back first, must wait for its row.
  const InboundMessage upsert = Msg("v1.messages.upsert.acme", kMessageUpsert);
  const InboundMessage update = Msg("v1.messages.update.acme", kMessageUpdate);
  store_.retry_key = std::make_pair(std::string("acme"), std::string("message_id=m1"));
  auto d = Run({upsert, update});
  ASSERT_TRUE(IsNak(d[0]) && IsNak(d[1]));
  clock_.Advance(milliseconds(13'000));
  store_.retry_key.reset();
  InboundMessage again = Again(update);
  ASSERT_TRUE(IsNak(RunOne(again))) << "13 s after its first try, but its row was never missing";
  EXPECT_TRUE(sink_.published.empty());
  // The upsert may stay in its backoff up to NAK_MAX_DELAY after its failure: the window
  // opens then.
  clock_.Advance(config_->nak_max_delay - milliseconds(13'000) + milliseconds(4000));
  again = Again(again);
  ASSERT_TRUE(IsNak(RunOne(again)));
  EXPECT_TRUE(sink_.published.empty()) << "4 s of the grace counted";
  ASSERT_TRUE(IsAck(RunOne(Again(upsert))));
  EXPECT_TRUE(IsAck(RunOne(Again(again))));
  EXPECT_EQ(store_.Column("acme", Table::kMessages, "message_id=m1", "status"), "read");
  EXPECT_TRUE(sink_.published.empty());
}

TEST_F(Pipeline, AppliesAnUpdateWhoseRowArrivesInsideTheGrace) {
  const InboundMessage update = Msg("v1.messages.update.acme", kMessageUpdate);
  ASSERT_TRUE(IsNak(RunOne(update)));
  clock_.Advance(milliseconds(2000));
  ASSERT_TRUE(IsAck(RunOne(Msg("v1.messages.upsert.acme", kMessageUpsert))));
  clock_.Advance(milliseconds(500));
  EXPECT_TRUE(IsAck(RunOne(Again(update))));
  EXPECT_EQ(store_.Column("acme", Table::kMessages, "message_id=m1", "status"), "read");
  EXPECT_TRUE(sink_.published.empty());
}

TEST_F(Pipeline, MeasuresTheGraceFromTheFirstTryNotFromPublishTime) {
  InboundMessage old = Msg("v1.chats.update.acme", R"({"chat_id":"c1","unread_count":1})");
  old.publish_time_ns = (clock_.UnixMillis() - 3'600'000) * 1'000'000;  // a backlog of 1 h
  Decision d = RunOne(old);
  EXPECT_TRUE(IsNak(d));
  EXPECT_TRUE(sink_.published.empty());

  clock_.Advance(config_->ordering_grace - milliseconds(1));
  EXPECT_TRUE(IsNak(RunOne(Again(old))));
  EXPECT_TRUE(sink_.published.empty());
}

TEST_F(Pipeline, TracksTheGraceOfEachEventSeparately) {
  const InboundMessage a = Msg("v1.chats.update.acme", R"({"chat_id":"a","unread_count":1})");
  ASSERT_TRUE(IsNak(RunOne(a)));
  clock_.Advance(milliseconds(5000));
  const InboundMessage b = Msg("v1.chats.update.acme", R"({"chat_id":"b","unread_count":1})");
  ASSERT_TRUE(IsNak(RunOne(b)));
  clock_.Advance(milliseconds(1000));
  auto d = Run({Again(a), Again(b)});
  EXPECT_TRUE(IsAck(d[0])) << "a waited 6s";
  EXPECT_TRUE(IsNak(d[1])) << "b waited 1s";
  ASSERT_EQ(sink_.published.size(), 1u);
  EXPECT_EQ(sink_.published[0].stream_seq, a.stream_seq);
}

TEST_F(Pipeline, AtMostAQuarterOfMaxAckPendingWaitsForItsRowsTheRestGoesToTheDlqWorker) {
  // Updates published before their rows: each waiting one keeps a MaxAckPending slot, and a
  // backlog of them would keep the rows from being delivered at all. MAX_ACK_PENDING 40:
  // 10 wait here, the others are handed to the DLQ worker (retryable, same grace window).
  Configure({{"BATCH_SIZE", "20"}, {"MAX_ACK_PENDING", "40"}});
  std::vector<InboundMessage> updates;
  updates.reserve(16);
  for (int k = 0; k < 16; ++k) {
    updates.push_back(Msg("v1.chats.update.acme",
                          R"({"chat_id":"c)" + std::to_string(k) + R"(","unread_count":1})"));
  }
  auto d = Run(updates);
  int naks = 0;
  for (const auto& x : d) naks += IsNak(x) ? 1 : 0;
  EXPECT_EQ(naks, 10);
  ASSERT_EQ(sink_.published.size(), 6u);
  for (const DeadLetter& dl : sink_.published) {
    EXPECT_EQ(dl.error_class, ErrorClass::kRetryable) << dl.reason;
    EXPECT_NE(dl.reason.find("handed to the DLQ worker"), std::string::npos) << dl.reason;
    // The worker's looks for the row are then bounded by the window, not DLQ_MAX_ATTEMPTS.
    EXPECT_EQ(dl.waiting_for_row.rfind("chat_id=c", 0), 0u) << dl.waiting_for_row;
  }
  // A waiting event that comes back is not counted twice, and one decided frees its slot.
  sink_.published.clear();
  RunOne(Msg("v1.chats.upsert.acme", Chat("c0", 1699999000, "Zero")));
  std::vector<InboundMessage> again;
  again.reserve(11);
  for (int k = 0; k < 10; ++k) again.push_back(Again(updates[static_cast<size_t>(k)]));
  again.push_back(Msg("v1.chats.update.acme", R"({"chat_id":"new","unread_count":1})"));
  d = Run(again);
  EXPECT_TRUE(IsAck(d[0])) << "its row exists now";
  for (size_t k = 1; k < d.size(); ++k) EXPECT_TRUE(IsNak(d[k])) << k;
  EXPECT_TRUE(sink_.published.empty());
}

TEST_F(Pipeline, ATenantWhoseWritesFailCannotHoldEverySlotWhileOtherTenantsWriteOn) {
  // One tenant's table is locked (or dropped): its events retry in delayed NAKs. MAX_ACK_PENDING
  // 40: 10 of them wait here; beyond, while other tenants' writes succeed, they are handed to
  // the DLQ worker, so that the other tenants keep slots to be delivered in.
  Configure({{"BATCH_SIZE", "20"}, {"MAX_ACK_PENDING", "40"}});
  store_.retry_tenant = "locked";
  std::vector<InboundMessage> batch;
  batch.reserve(17);
  for (int k = 0; k < 16; ++k) {
    batch.push_back(Msg("v1.chats.upsert.locked", Chat("c" + std::to_string(k), 1699999000, "L")));
  }
  batch.push_back(Msg("v1.chats.upsert.acme", Chat("c1", 1699999000, "A")));
  auto d = Run(batch);
  int naks = 0;
  for (size_t k = 0; k < 16; ++k) naks += IsNak(d[k]) ? 1 : 0;
  EXPECT_EQ(naks, 10);
  EXPECT_TRUE(IsAck(d[16]));
  ASSERT_EQ(sink_.published.size(), 6u);
  for (const DeadLetter& dl : sink_.published) {
    EXPECT_EQ(dl.Code(), ReasonCode::kRetriesExhausted) << dl.reason;
    EXPECT_EQ(dl.error_class, ErrorClass::kRetryable) << "the DLQ worker retries it";
    EXPECT_NE(dl.reason.find("handed to the DLQ worker"), std::string::npos) << dl.reason;
    EXPECT_TRUE(dl.waiting_for_row.empty()) << "a failed write, not a missing row";
  }
  // When no tenant's write goes through, it is the database: every event waits here.
  sink_.published.clear();
  store_.retry_tenant.reset();
  store_.retry_every_tenant = true;
  std::vector<InboundMessage> all_fail;
  all_fail.reserve(8);
  for (int k = 0; k < 8; ++k) {
    all_fail.push_back(
        Msg("v1.chats.upsert.t" + std::to_string(k), Chat("x", 1699999000, "Everyone")));
  }
  d = Run(all_fail);
  for (const auto& x : d) EXPECT_TRUE(IsNak(x));
  EXPECT_TRUE(sink_.published.empty());
}

TEST_F(Pipeline, NotYetRetriesEndByGraceBeforeMaxDeliverWithDefaults) {
  // Follow JetStream: redeliver after each NAK delay until the event is acked.
  InboundMessage msg = Msg("v1.contacts.update.acme", kContactUpdate);
  Decision d = RunOne(msg);
  int deliveries = 1;
  while (IsNak(d) && deliveries < 1000) {
    ASSERT_GT(d.delay, milliseconds(0));
    clock_.Advance(d.delay);
    msg = Again(msg);
    d = RunOne(msg);
    ++deliveries;
  }
  ASSERT_TRUE(IsAck(d));
  EXPECT_LT(deliveries, config_->max_deliver);
  ASSERT_EQ(sink_.published.size(), 1u);
  EXPECT_EQ(sink_.published[0].Code(), ReasonCode::kNotFoundAfterGrace)
      << sink_.published[0].reason;
}

TEST_F(Pipeline, NotYetDelaysStretchSoThatFewDeliveriesOutlastALongGrace) {
  // 3 deliveries for a 10-minute window: the NAK delays spread over the window, and the last
  // delivery ends as not_found_after_grace, not as an exhausted delivery count.
  Configure({{"MAX_DELIVER", "3"}, {"ORDERING_GRACE", "10m"}, {"NAK_MAX_DELAY", "30s"}});
  InboundMessage msg = Msg("v1.contacts.update.acme", kContactUpdate);
  Decision d = RunOne(msg);
  int deliveries = 1;
  while (IsNak(d) && deliveries < 10) {
    EXPECT_GE(d.delay, milliseconds(200'000)) << "delivery " << deliveries;
    clock_.Advance(d.delay);
    msg = Again(msg);
    d = RunOne(msg);
    ++deliveries;
  }
  ASSERT_TRUE(IsAck(d));
  EXPECT_EQ(deliveries, 3);
  ASSERT_EQ(sink_.published.size(), 1u);
  EXPECT_EQ(sink_.published[0].Code(), ReasonCode::kNotFoundAfterGrace)
      << sink_.published[0].reason;
  EXPECT_EQ(sink_.published[0].error_class, ErrorClass::kFatal);
}

TEST_F(Pipeline, AnUpdateOutOfDeliveriesInsideTheGraceKeepsItsFirstFailureTime) {
  // The last delivery comes inside the window (as after MAX_DELIVER was lowered, or a
  // restart): the retryable letter carries the time of the first try.
  Configure({{"MAX_DELIVER", "3"}, {"ORDERING_GRACE", "10m"}});
  InboundMessage msg = Msg("v1.contacts.update.acme", kContactUpdate);
  const int64_t first_try = clock_.UnixMillis();
  ASSERT_TRUE(IsNak(RunOne(msg)));
  clock_.Advance(milliseconds(1000));
  msg = Again(Again(msg));  // delivery 3 of 3, early
  ASSERT_EQ(msg.delivered, 3u);
  ASSERT_TRUE(IsAck(RunOne(msg)));
  ASSERT_EQ(sink_.published.size(), 1u);
  const DeadLetter& dl = sink_.published[0];
  EXPECT_EQ(dl.Code(), ReasonCode::kRetriesExhausted) << dl.reason;
  EXPECT_EQ(dl.error_class, ErrorClass::kRetryable) << "the DLQ worker looks again";
  EXPECT_EQ(dl.first_failed_ms, first_try);
  EXPECT_EQ(dl.last_failed_ms, first_try + 1000);
}

TEST_F(Pipeline, RetriesAnUpdateThatPrecedesItsUpsertInTheSameBatch) {
  const InboundMessage update = Msg("v1.chats.update.acme", kChatUpdate);
  const InboundMessage upsert = Msg("v1.chats.upsert.acme", kChatUpsert);
  auto d = Run({update, upsert});
  EXPECT_TRUE(IsNak(d[0])) << "the update found no row";
  EXPECT_TRUE(IsAck(d[1]));
  EXPECT_FALSE(store_.Column("acme", Table::kChats, "chat_id=c1", "unread_count").has_value());

  EXPECT_TRUE(IsAck(RunOne(Again(update))));
  EXPECT_EQ(store_.Column("acme", Table::kChats, "chat_id=c1", "unread_count"), "3");
  EXPECT_EQ(store_.Column("acme", Table::kChats, "chat_id=c1", "push_name"), "Ann");
  EXPECT_TRUE(sink_.published.empty());
}

TEST_F(Pipeline, AppliesAnUpdateAfterItsUpsertInTheSameBatch) {
  auto d =
      Run({Msg("v1.chats.upsert.acme", kChatUpsert), Msg("v1.chats.update.acme", kChatUpdate)});
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_TRUE(IsAck(d[1]));
  EXPECT_EQ(store_.Column("acme", Table::kChats, "chat_id=c1", "unread_count"), "3");
}

// ---------------------------------------------------------------------------------------------
// History

TEST_F(Pipeline, StoresValidHistoryItemsAndDeadLettersTheInvalidOneAlone) {
  const std::string bad_item = R"({"chat_id":"c2","jid":"j"})";
  const std::string body = R"({"chats":[)" + Chat("c1", 1699990000, "One") + "," + bad_item + "," +
                           Chat("c3", 1699990000, "Three") + "]}";
  const InboundMessage msg = Msg("v1.history.chats.acme", body);
  Decision d = RunOne(msg);
  EXPECT_TRUE(IsAck(d));
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 2u);
  EXPECT_EQ(store_.Column("acme", Table::kChats, "chat_id=c1", "push_name"), "One");
  EXPECT_EQ(store_.Column("acme", Table::kChats, "chat_id=c3", "push_name"), "Three");
  EXPECT_EQ(store_.Row("acme", Table::kChats, "chat_id=c2"), nullptr);
  ASSERT_EQ(sink_.published.size(), 1u);
  const DeadLetter& dl = sink_.published[0];
  EXPECT_EQ(dl.item_index, 1);
  EXPECT_EQ(dl.original, bad_item);
  EXPECT_EQ(dl.Code(), ReasonCode::kSchemaViolation) << dl.reason;
  EXPECT_EQ(dl.error_class, ErrorClass::kFatal);
  EXPECT_EQ(dl.company_id, "acme");
  EXPECT_EQ(dl.source_subject, "v1.history.chats.acme");
  EXPECT_EQ(dl.source_stream, "EVENTS_HISTORY");
  EXPECT_EQ(dl.stream_seq, msg.stream_seq);
  EXPECT_EQ(dl.attempts, 1);
  EXPECT_EQ(dl.published_ns, msg.publish_time_ns);
}

TEST_F(Pipeline, AHistoryItemThatIsNotValidJsonAloneFailsAloneNotTheWholeBatch) {
  // Each bad item makes the envelope unparsable as a whole: invalid UTF-8, a lone surrogate
  // escape, a syntax error, a raw NUL byte. The others are still stored (SPEC §5: each item
  // validated alone).
  const std::vector<std::string> bad_items = {
      "{\"chat_id\":\"c2\",\"jid\":\"j\",\"phone_number\":\"+1\",\"push_name\":\"\xff\xfe\"}",
      R"({"chat_id":"c2","jid":"j","phone_number":"+1","push_name":"\ud800"})",
      R"({"chat_id":"c2","jid":"j","phone_number":})",
      std::string(R"({"chat_id":"c2","jid":"j","phone_number":"+1","push_name":"a)") + '\0' +
          R"(b"})"};
  uint64_t seq = 100;
  for (const std::string& bad : bad_items) {
    sink_.published.clear();
    const std::string body = R"({"company_id":"acme", "chats":[)" + Chat("c1", 1699990000, "One") +
                             ",\n  " + bad + "," + Chat("c3", 1699990000, "Three") + "]}";
    InboundMessage msg = Msg("v1.history.chats.acme", body);
    msg.stream_seq = ++seq;
    EXPECT_TRUE(IsAck(RunOne(msg)));
    EXPECT_EQ(store_.RowCount("acme", Table::kChats), 2u) << bad;
    EXPECT_EQ(store_.Row("acme", Table::kChats, "chat_id=c2"), nullptr);
    ASSERT_EQ(sink_.published.size(), 1u) << bad;
    const DeadLetter& dl = sink_.published[0];
    EXPECT_EQ(dl.item_index, 1);
    EXPECT_TRUE(dl.original == bad) << "the item's exact bytes";
    EXPECT_EQ(dl.Code(), ReasonCode::kMalformedJson) << dl.reason;
  }
}

TEST_F(Pipeline, AHistoryItemNestedDeeperThanTheLimitOnlyInsideItsEnvelopeIsStored) {
  // 999 levels in the item: accepted as a realtime event, so also as a history item,
  // although the envelope takes the document past the 1,000-level limit.
  std::string deep;
  for (int k = 0; k < 998; ++k) deep += R"({"a":)";
  deep += "1";
  for (int k = 0; k < 998; ++k) deep += "}";
  const std::string item =
      R"({"chat_id":"c2","jid":"j","phone_number":"+1","last_message":)" + deep + "}";
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", item))));
  EXPECT_TRUE(
      IsAck(RunOne(Msg("v1.history.chats.acme",
                       R"({"chats":[)" + Chat("c1", 1699990000, "One") + "," + item + "]}"))));
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 2u);
  EXPECT_TRUE(sink_.published.empty());
}

TEST_F(Pipeline, AnEnvelopeThatCannotBeSplitIntoItemsIsMalformedAsAWhole) {
  for (const std::string& body :
       {std::string(R"({"chats":[{"chat_id":"c1"},{"chat_id":"\ud800"}], "x":1})"),
        std::string(R"({"chats":[{"chat_id":"c1"},{"chat_id":"\ud800"}]} trailing)"),
        std::string(R"({"company_id":"beta","chats":[{"chat_id":"\ud800"}]})"),
        std::string(R"({"chats":[{"chat_id":"c1"},{"chat_id":"\ud800"})"),
        std::string(R"({"chats":[{"chat_id":"c1"}]})") + '\0' +
            R"({"chats":[{"chat_id":"c2"}]})"}) {
    sink_.published.clear();
    EXPECT_TRUE(IsAck(RunOne(Msg("v1.history.chats.acme", body))));
    ASSERT_EQ(sink_.published.size(), 1u) << body;
    EXPECT_FALSE(sink_.published[0].item_index.has_value()) << body;
    EXPECT_EQ(sink_.published[0].Code(), ReasonCode::kMalformedJson) << body;
  }
  EXPECT_EQ(store_.TotalRows(), 0u);
}

TEST_F(Pipeline, CountsTheItemsOfAHistoryBatchByOutcome) {
  RunOne(Msg("v1.chats.upsert.acme", Chat("c3", 1699999000, "Newer")));
  store_.fatal_key = std::make_pair(std::string("acme"), std::string("chat_id=c4"));
  const std::string body = R"({"chats":[)" + Chat("c1", 1699990000, "One") +
                           R"(,{"chat_id":"c2"},)" + Chat("c3", 1699990000, "Older") + "," +
                           Chat("c4", 1699990000, "Refused") + "," +
                           Chat("c5", 1699990000, "Five") + "]}";
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.history.chats.acme", body))));
  const std::string text = observability::Serialize(metrics_.registry());
  for (const char* line :
       {R"(evp_history_items_total{outcome="applied",type="history.chats"} 2)",
        R"(evp_history_items_total{outcome="stale_skipped",type="history.chats"} 1)",
        R"(evp_history_items_total{outcome="dead_lettered",type="history.chats"} 2)",
        R"(evp_events_total{outcome="dead_lettered",type="chats.upsert"} 2)",
        R"(evp_history_items_total{outcome="applied",type="history.messages"} 0)"}) {
    EXPECT_NE(text.find(std::string(line) + "\n"), std::string::npos) << line << "\n" << text;
  }
}

TEST_F(Pipeline, CountsAHistoryBatchWithNothingToWriteOnce) {
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.history.chats.acme", R"({"chats":[]})"))));
  EXPECT_TRUE(
      IsAck(RunOne(Msg("v1.history.chats.acme", R"({"chats":[{"chat_id":"c1"},{"jid":"j"}]})"))));
  const std::string text = observability::Serialize(metrics_.registry());
  for (const char* line :
       {R"(evp_events_total{outcome="applied",type="history.chats"} 2)",
        R"(evp_history_items_total{outcome="dead_lettered",type="history.chats"} 2)",
        R"(evp_history_items_total{outcome="applied",type="history.chats"} 0)"}) {
    EXPECT_NE(text.find(std::string(line) + "\n"), std::string::npos) << line << "\n" << text;
  }
}

TEST_F(Pipeline, DeadLettersAHistoryItemOfAnotherTenantAlone) {
  const std::string body = R"({"contacts":[{"agent_id":"a1","phone_number":"+1"},)"
                           R"({"agent_id":"a1","phone_number":"+2","company_id":"beta"}]})";
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.history.contacts.acme", body))));
  EXPECT_EQ(store_.RowCount("acme", Table::kContacts), 1u);
  EXPECT_EQ(store_.RowCount("beta", Table::kContacts), 0u);
  ASSERT_EQ(sink_.published.size(), 1u);
  EXPECT_EQ(sink_.published[0].Code(), ReasonCode::kTenantMismatch);
  EXPECT_EQ(sink_.published[0].item_index, 1);
  EXPECT_EQ(sink_.published[0].company_id, "acme");
}

TEST_F(Pipeline, AcksAnEmptyHistoryBatch) {
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.history.messages.acme", R"({"messages":[]})"))));
  EXPECT_EQ(store_.TotalRows(), 0u);
  EXPECT_TRUE(sink_.published.empty());
}

TEST_F(Pipeline, NaksAHistoryBatchWhoseItemDeadLetterCannotBePublished) {
  sink_.fail = true;
  const std::string body =
      R"({"chats":[)" + Chat("c1", 1699990000, "One") + R"(,{"chat_id":"c2"}]})";
  EXPECT_TRUE(IsNak(RunOne(Msg("v1.history.chats.acme", body))));
}

TEST_F(Pipeline, DeadLettersOnlyTheHistoryItemTheStoreRefuses) {
  store_.fatal_key = std::make_pair(std::string("acme"), std::string("chat_id=c2"));
  // Spacing, key order, escapes and number spellings a re-serialisation would change.
  const std::string item2 =
      R"({ "phone_number":"1", "chat_id" : "c2","jid":"j","push_name":"caf\u00e9 \/ x",)"
      R"("last_message":{"z":1.50,"a":1e2}})";
  const std::string body = R"({"chats":[)" + Chat("c1", 1699990000, "One") + "," + item2 + "," +
                           Chat("c3", 1699990000, "Three") + "]}";
  const InboundMessage msg = Msg("v1.history.chats.acme", body);
  EXPECT_TRUE(IsAck(RunOne(msg)));
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 2u);
  ASSERT_EQ(sink_.published.size(), 1u);
  const DeadLetter& dl = sink_.published[0];
  EXPECT_EQ(dl.Code(), ReasonCode::kConstraintViolation) << dl.reason;
  EXPECT_EQ(dl.error_class, ErrorClass::kFatal);
  EXPECT_EQ(dl.item_index, 1);
  EXPECT_EQ(dl.original, item2) << "the item's exact bytes";
  EXPECT_NE(dl.reason.find("duplicate key"), std::string::npos) << dl.reason;
}

TEST_F(Pipeline, DoesNotOnboardFromHistoryMessages) {
  const std::string body =
      R"({"messages":[{"message_id":"m1","chat_id":"c1","jid":"j","flow":"IN",)"
      R"("agent_id":"a1","from_phone":"+5511"}]})";
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.history.messages.acme", body))));
  EXPECT_EQ(store_.RowCount("acme", Table::kMessages), 1u);
  EXPECT_EQ(store_.RowCount("acme", Table::kContacts), 0u);
  EXPECT_TRUE(store_.OnboardingLog().empty());
}

TEST_F(Pipeline, OnboardsTheSenderOfTheFirstInboundRealtimeMessageOnce) {
  const std::string m1 =
      R"({"message_id":"m1","chat_id":"c1","jid":"j","flow":"IN","agent_id":"a1",)"
      R"("from_phone":"+5511"})";
  const std::string m2 =
      R"({"message_id":"m2","chat_id":"c1","jid":"j","flow":"IN","agent_id":"a1",)"
      R"("from_phone":"+5511"})";
  const InboundMessage first = Msg("v1.messages.upsert.acme", m1);
  EXPECT_TRUE(IsAck(RunOne(first)));
  EXPECT_TRUE(IsAck(RunOne(Again(first))));
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.messages.upsert.acme", m2))));
  EXPECT_EQ(store_.OnboardingLog().size(), 1u);
  EXPECT_EQ(store_.Column("acme", Table::kContacts, "agent_id=a1,phone_number=+5511", "origin"),
            "DirectChat");
}

// ---------------------------------------------------------------------------------------------
// Constraint violations reported by the store

TEST_F(Pipeline, DeadLettersOnlyTheEventTheStoreRefuses) {
  store_.fatal_key = std::make_pair(std::string("acme"), std::string("chat_id=c2"));
  const std::string bad = Chat("c2", 1699999000, "Two");
  auto d = Run({Msg("v1.chats.upsert.acme", Chat("c1", 1699999000, "One")),
                Msg("v1.chats.upsert.acme", bad),
                Msg("v1.chats.upsert.acme", Chat("c3", 1699999000, "Three"))});
  for (const auto& x : d) EXPECT_TRUE(IsAck(x));
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 2u);
  EXPECT_NE(store_.Row("acme", Table::kChats, "chat_id=c1"), nullptr);
  EXPECT_NE(store_.Row("acme", Table::kChats, "chat_id=c3"), nullptr);
  ASSERT_EQ(sink_.published.size(), 1u);
  const DeadLetter& dl = sink_.published[0];
  EXPECT_EQ(dl.Code(), ReasonCode::kConstraintViolation) << dl.reason;
  EXPECT_EQ(dl.error_class, ErrorClass::kFatal);
  EXPECT_TRUE(dl.original == bad);
  EXPECT_EQ(dl.attempts, 1);
  EXPECT_EQ(processor_->last_stats().applied, 2u);
}

// ---------------------------------------------------------------------------------------------
// Order and idempotency

TEST_F(Pipeline, KeepsTheNewestChatWhenAnOlderUpsertArrivesLater) {
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", Chat("c1", 1699999200, "New")))));
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", Chat("c1", 1699999100, "Old")))));
  EXPECT_EQ(processor_->last_stats().stale, 1u);
  EXPECT_EQ(processor_->last_stats().applied, 0u);
  EXPECT_EQ(store_.Column("acme", Table::kChats, "chat_id=c1", "push_name"), "New");
  EXPECT_EQ(store_.Column("acme", Table::kChats, "chat_id=c1", "conversation_timestamp"),
            "1699999200");
  EXPECT_TRUE(sink_.published.empty());
}

TEST_F(Pipeline, KeepsTheNewestChatWhenReorderedInOneBatch) {
  auto d = Run({Msg("v1.chats.upsert.acme", Chat("c1", 1699999200, "New")),
                Msg("v1.chats.upsert.acme", Chat("c1", 1699999100, "Old"))});
  EXPECT_TRUE(IsAck(d[0]));
  EXPECT_TRUE(IsAck(d[1]));
  EXPECT_EQ(store_.Column("acme", Table::kChats, "chat_id=c1", "push_name"), "New");
}

TEST_F(Pipeline, IgnoresAnOlderUpdateOfAChat) {
  ASSERT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", Chat("c1", 1699999200, "New")))));
  EXPECT_TRUE(IsAck(
      RunOne(Msg("v1.chats.update.acme",
                 R"({"chat_id":"c1","unread_count":9,"conversation_timestamp":1699999000})"))));
  EXPECT_FALSE(store_.Column("acme", Table::kChats, "chat_id=c1", "unread_count").has_value());
  EXPECT_TRUE(sink_.published.empty()) << "a stale update is not a failure";
}

TEST_F(Pipeline, LetsRealtimeWinATieWithAHistoryItem) {
  ASSERT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", Chat("c1", 1699999000, "Realtime")))));
  next_seq_ = 1000;  // the history stream has its own, larger sequence numbers
  const std::string body = R"({"chats":[)" + Chat("c1", 1699999000, "History") + "]}";
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.history.chats.acme", body))));
  EXPECT_EQ(store_.Column("acme", Table::kChats, "chat_id=c1", "push_name"), "Realtime");

  const std::string body2 = R"({"chats":[)" + Chat("c2", 1699999000, "History") + "]}";
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.history.chats.acme", body2))));
  next_seq_ = 2;
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.acme", Chat("c2", 1699999000, "Realtime")))));
  EXPECT_EQ(store_.Column("acme", Table::kChats, "chat_id=c2", "push_name"), "Realtime");
}

TEST_F(Pipeline, ChangesNothingOnRedeliveryOfTheSameEvent) {
  const InboundMessage msg = Msg("v1.chats.upsert.acme", kChatUpsert);
  ASSERT_TRUE(IsAck(RunOne(msg)));
  const FakeRow* row = store_.Row("acme", Table::kChats, "chat_id=c1");
  ASSERT_NE(row, nullptr);
  const FakeRow before = *row;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(IsAck(RunOne(Again(msg))));
    EXPECT_EQ(*store_.Row("acme", Table::kChats, "chat_id=c1"), before);
  }
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 1u);
  EXPECT_TRUE(sink_.published.empty());
}

TEST_F(Pipeline, KeepsAPartialUpdateFromErasingOtherFields) {
  ASSERT_TRUE(IsAck(RunOne(Msg("v1.contacts.upsert.acme", kContactUpsert))));
  ASSERT_TRUE(IsAck(RunOne(Msg("v1.contacts.update.acme", kContactUpdate))));
  const std::string key = "agent_id=a1,phone_number=+5511";
  EXPECT_EQ(store_.Column("acme", Table::kContacts, key, "push_name"), "Ann");
  EXPECT_EQ(store_.Column("acme", Table::kContacts, key, "notes"), "vip");
}

// ---------------------------------------------------------------------------------------------
// Tenants

TEST_F(Pipeline, AcksOtherTenantsEventsUntouchedWhenAllowListed) {
  Configure({{"TENANTS", "acme"}});
  auto d = Run({Msg("v1.chats.upsert.beta", kChatUpsert), Msg("v1.chats.upsert.beta", "{bad"),
                Msg("v1.chats.update.beta", kChatUpdate), Msg("v1.chats.delete.beta", kChatUpsert),
                Msg("v1.chats.upsert.acme", kChatUpsert)});
  for (const auto& x : d) EXPECT_TRUE(IsAck(x));
  EXPECT_TRUE(sink_.published.empty()) << "another deployment owns beta's events";
  EXPECT_EQ(exhausted_.size(), 0u);
  EXPECT_FALSE(store_.HasTenant("beta"));
  EXPECT_EQ(store_.RowCount("beta", Table::kChats), 0u);
  EXPECT_EQ(store_.RowCount("acme", Table::kChats), 1u);
}

TEST_F(Pipeline, AnAllowListedDeploymentStillDeadLettersItsOwnAndInvalidTenantsSubjects) {
  Configure({{"TENANTS", "acme"}});
  auto d = Run({Msg("v1.chats.delete.acme", kChatUpsert), Msg("v1.chats.upsert.1bad", kChatUpsert),
                Msg("v1.chats.upsert", kChatUpsert)});
  for (const auto& x : d) EXPECT_TRUE(IsAck(x));
  ASSERT_EQ(sink_.published.size(), 3u);
  EXPECT_EQ(sink_.published[0].Code(), ReasonCode::kUnknownType);
  EXPECT_EQ(sink_.published[1].Code(), ReasonCode::kInvalidTenant);
  EXPECT_EQ(sink_.published[2].Code(), ReasonCode::kUnknownType) << "a missing token: no tenant";
}

TEST_F(Pipeline, DeadLettersATenantThatCollidesByCaseWithARegisteredOne) {
  store_.AddTenant("Acme");
  const InboundMessage msg = Msg("v1.chats.upsert.acme", kChatUpsert);
  EXPECT_TRUE(IsAck(RunOne(msg)));
  ASSERT_EQ(sink_.published.size(), 1u);
  const DeadLetter& dl = sink_.published[0];
  EXPECT_EQ(dl.Code(), ReasonCode::kInvalidTenant) << dl.reason;
  EXPECT_EQ(dl.error_class, ErrorClass::kFatal);
  EXPECT_EQ(dl.company_id, "acme");
  EXPECT_NE(dl.reason.find("collides"), std::string::npos) << dl.reason;
  EXPECT_TRUE(dl.original == kChatUpsert);
  EXPECT_FALSE(store_.HasTenant("acme"));
  EXPECT_EQ(store_.TotalRows(), 0u);

  // The registered tenant keeps working.
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.chats.upsert.Acme", kChatUpsert))));
  EXPECT_EQ(store_.RowCount("Acme", Table::kChats), 1u);
}

TEST_F(Pipeline, RefusesACollidingTenantEvenWhenItsEventHasNothingToWrite) {
  store_.AddTenant("Acme");
  const std::string empty = R"({"chats":[]})";
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.history.chats.acme", empty))));
  ASSERT_EQ(sink_.published.size(), 1u) << "an empty batch of a colliding tenant is refused too";
  EXPECT_EQ(sink_.published[0].Code(), ReasonCode::kInvalidTenant) << sink_.published[0].reason;
  EXPECT_EQ(sink_.published[0].company_id, "acme");
  EXPECT_TRUE(sink_.published[0].original == empty);
  EXPECT_FALSE(store_.HasTenant("acme"));

  // A new tenant's empty batch is its first sight: its schema is created.
  EXPECT_TRUE(IsAck(RunOne(Msg("v1.history.contacts.newco", R"({"contacts":[]})"))));
  EXPECT_EQ(sink_.published.size(), 1u);
  EXPECT_TRUE(store_.HasTenant("newco"));
}

// ---------------------------------------------------------------------------------------------
// GraceTracker

TEST(GraceTracker, RemembersTheFirstTimeAnEventWasSeen) {
  GraceTracker tracker(milliseconds(60000));
  const auto t0 = std::chrono::steady_clock::time_point(std::chrono::hours(1));
  EXPECT_EQ(tracker.FirstSeen("S:1", t0), t0);
  EXPECT_EQ(tracker.FirstSeen("S:1", t0 + milliseconds(5000)), t0);
  EXPECT_EQ(tracker.FirstSeen("S:2", t0 + milliseconds(5000)), t0 + milliseconds(5000));
  EXPECT_EQ(tracker.size(), 2u);
  tracker.Forget("S:1");
  EXPECT_EQ(tracker.FirstSeen("S:1", t0 + milliseconds(9000)), t0 + milliseconds(9000));
}

TEST(GraceTracker, TheWindowOpensAtTheFirstTryThatFoundTheRowMissingAndNotBeforeItsStart) {
  GraceTracker tracker(milliseconds(60000));
  const auto t0 = std::chrono::steady_clock::time_point(std::chrono::hours(1));
  tracker.FirstSeen("S:1", t0);  // a try whose write failed
  tracker.Extend(milliseconds(2000));
  EXPECT_EQ(tracker.Waited("S:1", t0 + milliseconds(10'000)), milliseconds(0));
  EXPECT_EQ(tracker.Waited("S:1", t0 + milliseconds(13'000)), milliseconds(3000));
  EXPECT_EQ(tracker.FirstSeen("S:1", t0), t0) << "the first try keeps its time";
  EXPECT_EQ(tracker.Waited("S:1", t0 + milliseconds(13'000), t0 + milliseconds(12'000)),
            milliseconds(1000));
  EXPECT_EQ(tracker.Waited("S:1", t0 + milliseconds(13'000), t0 + milliseconds(20'000)),
            milliseconds(0));
}

TEST(GraceTracker, OutagesDoNotCountAsWaiting) {
  GraceTracker tracker(milliseconds(60000));
  const auto t0 = std::chrono::steady_clock::time_point(std::chrono::hours(1));
  EXPECT_EQ(tracker.Waited("S:1", t0), milliseconds(0));  // found its row missing: the window opens
  tracker.Extend(milliseconds(4000));
  EXPECT_EQ(tracker.Waited("S:1", t0 + milliseconds(5000)), milliseconds(1000));
  EXPECT_EQ(tracker.FirstSeen("S:1", t0 + milliseconds(5000)), t0) << "the real first try";
  // An event first seen after the outage is not affected by it.
  EXPECT_EQ(tracker.Waited("S:2", t0 + milliseconds(5000)), milliseconds(0));
  EXPECT_EQ(tracker.Waited("S:2", t0 + milliseconds(7000)), milliseconds(2000));
}

}  // namespace
}  // namespace evp::pipeline
