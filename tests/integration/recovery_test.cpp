// An operator deletes the realtime consumer or the whole stream while the processor runs:
// the processor recreates them and consumes again, without a restart.
#include <gtest/gtest.h>
#include <nats/nats.h>

#include <nlohmann/json.hpp>

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

TEST(Recovery, DeletedConsumerIsRecreatedAndConsumingResumes) {
  Stack stack;
  const std::string t = UniqueName("rec");
  const std::string count = MessageCount(t);
  ASSERT_TRUE(Consuming(stack, t));

  TestPublisher admin(stack.Nats().Url());
  jsErrCode jerr = static_cast<jsErrCode>(0);
  // The server may report a failure (10051) although the consumer is gone: the recreation
  // logged below is what proves the deletion.
  js_DeleteConsumer(admin.JetStream(), "EVENTS_REALTIME", "events-processor-realtime", nullptr,
                    &jerr);
  ASSERT_TRUE(WaitFor(
      [&] {
        return stack.Processor().Log().find("consumer recreated and bound again") !=
               std::string::npos;
      },
      std::chrono::seconds(30)))
      << stack.Processor().Log();

  ASSERT_TRUE(stack.Publish("v1.messages.upsert." + t, Message("m2")).ok);
  EXPECT_TRUE(stack.WaitCount(count, 2, std::chrono::seconds(30)))
      << "consuming did not resume; processor log:\n"
      << stack.Processor().Log();
  EXPECT_TRUE(stack.Processor().Running());
}

TEST(Recovery, DeletedStreamIsRecreatedAndConsumingResumes) {
  Stack stack;
  const std::string t = UniqueName("rec");
  const std::string count = MessageCount(t);
  ASSERT_TRUE(Consuming(stack, t));

  TestPublisher admin(stack.Nats().Url());
  jsErrCode jerr = static_cast<jsErrCode>(0);
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
