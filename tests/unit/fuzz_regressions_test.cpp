// Regressions for crashes of untrusted input found around the libFuzzer targets (tests/fuzz/):
// each test feeds the minimized input to the same function and expects a sensible result.
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "core/dead_letter.hpp"
#include "dlq/dlq_handler.hpp"
#include "observability/metrics.hpp"
#include "unit/fakes.hpp"
#include "validation/schema_registry.hpp"

namespace evp::dlq {
namespace {

// Found by dlq_fuzz in CI: a dead letter carrying Evp-Trace-Id (with control bytes) keeps its
// trace id through encode and decode, cleaned, and the header is one of the known ones.
TEST(FuzzRegressions, ATraceIdHeaderSurvivesTheDeadLetterRoundTripCleaned) {
  HeaderMap in = {{dlq_headers::kSourceSubject, "v1.chats.upsert.acme"},
                  {dlq_headers::kErrorClass, "fatal"},
                  {dlq_headers::kReason, "malformed_json: x"},
                  {dlq_headers::kAttempts, "2"},
                  {dlq_headers::kSourceStream, "EVENTS_REALTIME"},
                  {dlq_headers::kStreamSeq, "1"},
                  {dlq_headers::kTraceId, "1\x01"}};
  auto decoded = DecodeDeadLetter(in, std::string("{\"chat_id\":\0", 12));
  ASSERT_TRUE(decoded.ok()) << decoded.error();
  const HeaderMap out = EncodeDeadLetterHeaders(decoded.value());
  ASSERT_EQ(out.count(dlq_headers::kTraceId), 1u);
  EXPECT_EQ(out.at(dlq_headers::kTraceId), "1 ");
  auto again = DecodeDeadLetter(out, decoded.value().original);
  ASSERT_TRUE(again.ok()) << again.error();
  EXPECT_EQ(again.value().trace_id, "1 ");
  EXPECT_EQ(again.value().original, decoded.value().original);
}

// Found while writing dlq_fuzz (by review; DlqHandler is not fuzzed: it links prometheus):
// DecodeDeadLetter accepts any non-negative int in Evp-Attempts and DlqHandler::Retry computes
// attempts + 1, a signed overflow for 2147483647 (UBSan aborts; unsanitized, the letter is
// republished with attempts -2147483648, which the next decode rejects as a bad header).
TEST(FuzzRegressions, DlqWorkerExhaustsALetterWhoseAttemptsHeaderIsIntMax) {
  spdlog::set_level(spdlog::level::off);
  auto schemas = validation::SchemaRegistry::LoadEmbedded();
  ASSERT_TRUE(schemas.ok()) << schemas.error();
  auto cfg = Config::FromEnvironment(Binary::kDlqWorker,
                                     [](const std::string& k) -> std::optional<std::string> {
                                       if (k == "POSTGRES_DSN")
                                         return std::string("postgresql://test@localhost/test");
                                       return std::nullopt;
                                     });
  ASSERT_TRUE(cfg.ok());
  observability::Metrics metrics{"test"};
  evp::testing::InMemoryEventStore store;
  evp::testing::InMemoryExhaustedStore exhausted;
  evp::testing::RecordingDeadLetterSink sink;
  evp::testing::FakeClock clock;
  DlqHandler handler(*cfg, *schemas, store, exhausted, sink, clock, metrics, 1);

  pipeline::InboundMessage msg;
  msg.subject = "v1.dlq.acme";
  msg.data = R"({"chat_id":"c1"})";
  msg.headers = {{"Evp-Source-Subject", "v1.chats.update.acme"},
                 {"Evp-Company-Id", "acme"},
                 {"Evp-Error-Class", "retryable"},
                 {"Evp-Reason", "not_found_after_grace: chat c1"},
                 {"Evp-Attempts", "2147483647"},
                 {"Evp-Source-Stream", "EVENTS_REALTIME"},
                 {"Evp-Stream-Seq", "1"}};
  msg.stream = "EVENTS_DLQ";
  msg.stream_seq = 1;
  const std::vector<pipeline::InboundMessage> batch = {msg};

  const auto decisions = handler.Process(batch);  // UBSan: signed overflow before the fix
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0].kind, pipeline::Decision::Kind::kAck);
  EXPECT_TRUE(sink.published.empty())
      << "republished with attempts " << sink.published.front().attempts;
  EXPECT_EQ(exhausted.size(), 1u) << "the attempt budget is spent: record it";
  spdlog::set_level(spdlog::level::info);
}

}  // namespace
}  // namespace evp::dlq
