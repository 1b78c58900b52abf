// MAX_DELIVERIES advisories (SPEC §11 "Crashes vs limits"): an event JetStream gave up on is
// read back from its stream and sent to the DLQ as a retryable dead letter with its exact
// bytes; one gone from the stream is still recorded; allow-listed deployments leave other
// tenants' events to their own worker.
#include "dlq/advisory_handler.hpp"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>

#include "config/config.hpp"
#include "observability/metrics.hpp"
#include "unit/fakes.hpp"

namespace evp::dlq {
namespace {

using evp::testing::FakeClock;
using evp::testing::InMemoryExhaustedStore;
using evp::testing::RecordingDeadLetterSink;
using pipeline::Decision;
using pipeline::InboundMessage;

class FakeMessageStore final : public MessageStore {
 public:
  std::map<std::pair<std::string, uint64_t>, InboundMessage> messages;
  Result<std::optional<InboundMessage>, std::string> Get(const std::string& stream,
                                                         uint64_t seq) override {
    auto it = messages.find({stream, seq});
    if (it == messages.end()) return std::optional<InboundMessage>{};
    return std::optional<InboundMessage>{it->second};
  }
};

InboundMessage Advisory(const std::string& stream, uint64_t seq) {
  InboundMessage m;
  m.subject = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + stream + ".events-processor";
  m.data = nlohmann::json{
      {"type", "io.nats.jetstream.advisory.v1.max_deliver"},
      {"stream", stream},
      {"consumer", "events-processor"},
      {"stream_seq", seq},
      {"deliveries",
       20}}.dump();
  return m;
}

class AdvisoryHandlerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { spdlog::set_level(spdlog::level::off); }

  void Start(const std::string& tenants = "") {
    auto cfg = Config::FromEnvironment(Binary::kDlqWorker,
                                       [&](const std::string& k) -> std::optional<std::string> {
                                         if (k == "POSTGRES_DSN") return std::string("host=db");
                                         if (k == "TENANTS" && !tenants.empty()) return tenants;
                                         return std::nullopt;
                                       });
    ASSERT_TRUE(cfg.ok());
    config_ = std::make_unique<Config>(std::move(cfg).value());
    handler_ =
        std::make_unique<AdvisoryHandler>(*config_, messages_, sink_, exhausted_, clock_, metrics_);
  }

  void Store(uint64_t seq, const std::string& subject, const std::string& body) {
    InboundMessage m;
    m.subject = subject;
    m.data = body;
    m.stream = config_->realtime_stream;
    m.stream_seq = seq;
    m.msg_id = "pub-" + std::to_string(seq);
    messages_.messages[{config_->realtime_stream, seq}] = m;
  }

  Decision Handle(const InboundMessage& advisory) {
    auto decisions = handler_->Process(std::span<const InboundMessage>(&advisory, 1));
    EXPECT_EQ(decisions.size(), 1u);
    return decisions.at(0);
  }

  std::unique_ptr<Config> config_;
  FakeMessageStore messages_;
  RecordingDeadLetterSink sink_;
  InMemoryExhaustedStore exhausted_;
  FakeClock clock_;
  observability::Metrics metrics_{"test"};
  std::unique_ptr<AdvisoryHandler> handler_;
};

TEST_F(AdvisoryHandlerTest, TurnsTheUndeliveredEventIntoARetryableDeadLetterWithItsExactBytes) {
  Start();
  const std::string body = R"({"chat_id":"c1", "jid":"j","phone_number":"+1"})";
  Store(7, "v1.chats.upsert.acme", body);
  EXPECT_EQ(Handle(Advisory(config_->realtime_stream, 7)).kind, Decision::Kind::kAck);
  ASSERT_EQ(sink_.published.size(), 1u);
  const DeadLetter& dl = sink_.published[0];
  EXPECT_EQ(dl.original, body);
  EXPECT_EQ(dl.source_subject, "v1.chats.upsert.acme");
  EXPECT_EQ(dl.company_id, "acme");
  EXPECT_EQ(dl.error_class, ErrorClass::kRetryable);
  EXPECT_EQ(dl.stream_seq, 7u);
  EXPECT_EQ(dl.orig_msg_id, "pub-7");
  EXPECT_EQ(dl.reason.rfind("retries_exhausted: delivered 20 times by consumer", 0), 0u)
      << dl.reason;
}

TEST_F(AdvisoryHandlerTest, RecordsAnEventNoLongerInTheStream) {
  Start();
  EXPECT_EQ(Handle(Advisory(config_->realtime_stream, 99)).kind, Decision::Kind::kAck);
  EXPECT_TRUE(sink_.published.empty());
  ASSERT_EQ(exhausted_.size(), 1u);
  EXPECT_NE(exhausted_.Rows()[0].reason.find("no longer in the stream"), std::string::npos);
}

TEST_F(AdvisoryHandlerTest, IgnoresAdvisoriesOfOtherStreams) {
  Start();
  EXPECT_EQ(Handle(Advisory("SOMEONE_ELSES_STREAM", 1)).kind, Decision::Kind::kAck);
  EXPECT_TRUE(sink_.published.empty());
  EXPECT_EQ(exhausted_.size(), 0u);
}

TEST_F(AdvisoryHandlerTest, AnAllowListedDeploymentLeavesOtherTenantsEventsToTheirOwn) {
  Start("acme");
  Store(1, "v1.chats.upsert.globex", "{}");
  Store(2, "v1.chats.upsert.acme", "{}");
  EXPECT_EQ(Handle(Advisory(config_->realtime_stream, 1)).kind, Decision::Kind::kAck);
  EXPECT_TRUE(sink_.published.empty());
  EXPECT_EQ(Handle(Advisory(config_->realtime_stream, 2)).kind, Decision::Kind::kAck);
  ASSERT_EQ(sink_.published.size(), 1u);
  EXPECT_EQ(sink_.published[0].company_id, "acme");
}

}  // namespace
}  // namespace evp::dlq
