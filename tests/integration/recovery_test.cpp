// An operator deletes the realtime consumer or the whole stream while the processor runs:
// the processor recreates them and consumes again, without a restart.
#include <gtest/gtest.h>
#include <nats/nats.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "integration/stack.hpp"

namespace evp::testing {
namespace {

using nlohmann::json;

std::string Message(const std::string& id) {
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  return json{{"message_id", id},
              {"chat_id", "c1"},
              {"jid", "j1"},
              {"flow", "OUT"},
              {"message_text", "text " + id},
              {"message_timestamp", now}}
      .dump();
}

std::string MessageCount(const std::string& tenant) {
  return "SELECT count(*) FROM tenant_" + tenant + ".messages";
}

// The processor applies a first message of `tenant`: it is consuming before the deletion.
bool Consuming(Stack& stack, const std::string& tenant) {
  return stack.Publish("v1.messages.upsert." + tenant, Message("m1")).ok &&
         stack.WaitCount(MessageCount(tenant), 1);
}

// The value of an unlabelled counter in a /metrics text; -1 when it is missing.
double CounterValue(const std::string& metrics, const std::string& name) {
  const std::string prefix = "\n" + name + " ";
  const size_t at = metrics.find(prefix);
  if (at == std::string::npos) return -1;
  return std::stod(metrics.substr(at + prefix.size()));
}

// PostgreSQL goes down while the processor is idle: its database probe pauses fetching, so
// events published meanwhile wait in the stream instead of each using up a delivery on a
// write that cannot succeed (SPEC §11: stop fetching while the database is unavailable).
TEST(Recovery, EventsPublishedWhileTheDatabaseIsDownUseNoDelivery) {
  Stack stack({}, /*private_postgres=*/true);
  const std::string t = UniqueName("out");
  ASSERT_TRUE(Consuming(stack, t));
  stack.PrivatePostgres()->Stop();
  const std::string paused = "fetching paused until the database answers";
  // The realtime loop's own line (the history loop logs one too).
  ASSERT_TRUE(WaitFor(
      [&] {
        std::istringstream log(stack.Processor().Log());
        for (std::string line; std::getline(log, line);) {
          if (line.find(paused) != std::string::npos &&
              line.find("consumer=events-processor-realtime") != std::string::npos) {
            return true;
          }
        }
        return false;
      },
      std::chrono::seconds(15)))
      << stack.Processor().Log();
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, Message("o" + std::to_string(i))).ok);
  }
  stack.PrivatePostgres()->Start();
  EXPECT_TRUE(stack.WaitCount(MessageCount(t), 21, std::chrono::seconds(60)))
      << stack.Processor().Log();
  EXPECT_EQ(
      CounterValue(Stack::HttpGet(stack.ProcessorPort(), "/metrics"), "evp_redeliveries_total"), 0)
      << stack.Processor().Log();
}

// Polls /readyz until its body reports these states of NATS and PostgreSQL; `body` is the
// last answer.
bool WaitForReadiness(int port, bool nats, bool postgres, std::string& body) {
  const std::string want_nats = std::string("\"nats\":") + (nats ? "true" : "false");
  const std::string want_pg = std::string("\"postgres\":") + (postgres ? "true" : "false");
  return WaitFor(
      [&] {
        body = Stack::HttpGet(port, "/readyz");
        return body.find(want_nats) != std::string::npos && body.find(want_pg) != std::string::npos;
      },
      std::chrono::seconds(20));
}

// Started while PostgreSQL cannot be reached, the processor says which part is missing:
// NATS is up, PostgreSQL is not.
TEST(Recovery, ReadinessNamesTheDatabaseWhenOnlyTheDatabaseIsMissingAtStart) {
  NatsServer nats;
  const int port = FreeTcpPort();
  ChildProcess processor(
      BinaryPath("events-processor"), {},
      {{"NATS_URL", nats.Url()},
       {"POSTGRES_DSN", "postgresql://postgres@127.0.0.1:" + std::to_string(FreeTcpPort()) +
                            "/none?connect_timeout=1"},
       {"HTTP_PORT", std::to_string(port)},
       {"LOG_FORMAT", "text"}});
  std::string body;
  const bool named = WaitForReadiness(port, true, false, body);
  EXPECT_TRUE(named) << body << "\n" << processor.Log();
  EXPECT_NE(body.find("\"ready\":false"), std::string::npos) << body;
}

// And the other way round, for both services: NATS cannot be reached, PostgreSQL answers.
TEST(Recovery, ReadinessNamesNatsWhenOnlyNatsIsMissingAtStart) {
  const std::string nats_url = "nats://127.0.0.1:" + std::to_string(FreeTcpPort());
  for (const char* binary : {"events-processor", "dlq-worker"}) {
    const int port = FreeTcpPort();
    ChildProcess service(BinaryPath(binary), {},
                         {{"NATS_URL", nats_url},
                          {"POSTGRES_DSN", PostgresServer::Shared().Dsn()},
                          {"HTTP_PORT", std::to_string(port)},
                          {"LOG_FORMAT", "text"}});
    std::string body;
    const bool named = WaitForReadiness(port, false, true, body);
    EXPECT_TRUE(named) << binary << ": " << body << "\n" << service.Log();
    EXPECT_NE(body.find("\"ready\":false"), std::string::npos) << binary << ": " << body;
  }
}

TEST(Recovery, DeletedConsumerIsRecreatedAndConsumingResumes) {
  Stack stack;
  const std::string t = UniqueName("rec");
  const std::string count = MessageCount(t);
  ASSERT_TRUE(Consuming(stack, t));

  TestPublisher admin(stack.Nats().Url());
  jsErrCode jerr{};
  // The server may report a failure (10051) although the consumer is gone: the recreation
  // logged below is what proves the deletion.
  js_DeleteConsumer(admin.JetStream(), "EVENTS_REALTIME", "events-processor-realtime", nullptr,
                    &jerr);
  // Not ready while the consumer is missing (it is recreated about 3 s later).
  EXPECT_TRUE(
      WaitFor([&] { return !Stack::Ready(stack.ProcessorPort()); }, std::chrono::seconds(10)))
      << Stack::HttpGet(stack.ProcessorPort(), "/readyz");
  ASSERT_TRUE(WaitFor(
      [&] {
        return stack.Processor().Log().find("stream or consumer missing") != std::string::npos &&
               stack.Processor().Log().find("bound to the consumer again") != std::string::npos;
      },
      std::chrono::seconds(30)))
      << stack.Processor().Log();

  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, Message("m2")).ok);
  EXPECT_TRUE(stack.WaitCount(count, 2, std::chrono::seconds(30)))
      << "consuming did not resume; processor log:\n"
      << stack.Processor().Log();
  EXPECT_TRUE(stack.Processor().Running());
  EXPECT_TRUE(WaitFor([&] { return Stack::Ready(stack.ProcessorPort()); }));
}

TEST(Recovery, DeletedStreamIsRecreatedAndConsumingResumes) {
  Stack stack;
  const std::string t = UniqueName("rec");
  const std::string count = MessageCount(t);
  ASSERT_TRUE(Consuming(stack, t));

  TestPublisher admin(stack.Nats().Url());
  jsErrCode jerr{};
  ASSERT_EQ(js_DeleteStream(admin.JetStream(), "EVENTS_REALTIME", nullptr, &jerr), NATS_OK) << jerr;

  // Publishing fails (no stream) until the stream is back.
  const bool republished =
      WaitFor([&] { return stack.Publish("v1.messages.upsert." + t, Message("m2"), "m2-id").ok; },
              std::chrono::seconds(30));
  ASSERT_TRUE(republished) << "the stream was not recreated; processor log:\n"
                           << stack.Processor().Log();
  EXPECT_TRUE(stack.WaitCount(count, 2, std::chrono::seconds(30)))
      << "consuming did not resume; processor log:\n"
      << stack.Processor().Log();
  EXPECT_TRUE(stack.Processor().Running());
}

}  // namespace
}  // namespace evp::testing
