#pragma once
// A JetStream publisher for tests (nats.c): publishes with optional Nats-Msg-Id and headers
// and reports whether a PubAck came back. A subject no stream captures gets no PubAck (error
// "no responders: ..."), which is how publishers learn an event was refused.
//
// Thread-safety: nats.c connections are thread-safe, so one TestPublisher may be shared.
#include <nats/nats.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace evp::testing {

struct PubResult {
  bool ok = false;         // a PubAck came back
  uint64_t sequence = 0;   // stream sequence from the PubAck
  bool duplicate = false;  // the stream had this Nats-Msg-Id already (dedup window)
  std::string stream;      // stream that stored it
  std::string error;       // why there is no PubAck; empty when ok
};

class TestPublisher {
 public:
  // Connects (reconnecting forever on loss, so server restarts are survived); throws
  // std::runtime_error when the first connect fails.
  explicit TestPublisher(std::string url);
  ~TestPublisher();
  TestPublisher(const TestPublisher&) = delete;
  TestPublisher& operator=(const TestPublisher&) = delete;

  PubResult Publish(const std::string& subject, std::string_view bytes,
                    const std::string& msg_id = "",
                    const std::map<std::string, std::string>& headers = {});
  // Creates a file-storage stream capturing `subjects` (updates it when it exists).
  // Returns an empty string on success, else the error.
  std::string AddStream(const std::string& name, const std::vector<std::string>& subjects);

  natsConnection* Connection() const { return conn_; }
  jsCtx* JetStream() const { return js_; }

 private:
  std::string url_;
  natsConnection* conn_ = nullptr;
  jsCtx* js_ = nullptr;
};

}  // namespace evp::testing
