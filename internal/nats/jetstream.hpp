#pragma once
// JetStream adapter: connection, streams and consumers, pull fetch, acks and publishing.
// The only files that include nats.h are in this folder.
// Thread-safety: a NatsConnection may be shared (nats.c is thread-safe); a JetStreamSource
// belongs to one consumer loop.
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "dlq/advisory_handler.hpp"
#include "pipeline/ports.hpp"

// nats.c's own type names, declared here so that only jetstream.cpp includes nats.h.
struct __natsConnection;    // NOLINT(bugprone-reserved-identifier)
struct __jsCtx;             // NOLINT(bugprone-reserved-identifier)
struct __natsSubscription;  // NOLINT(bugprone-reserved-identifier)
struct __natsMsg;           // NOLINT(bugprone-reserved-identifier)

namespace evp::nats {

struct ConsumerSpec {
  std::string stream;
  std::string durable;
  std::chrono::milliseconds ack_wait{};
  int max_deliver = 0;
  int max_ack_pending = 0;
  std::string filter_subject;  // empty = the whole stream
};

// What updating an existing consumer to `wanted` changes, e.g. "max_ack_pending 16000 -> 120";
// empty when nothing does. Replicas share the durable consumer, so one started with other
// settings changes them for all: the service logs this as a warning.
std::string ConsumerChanges(std::chrono::milliseconds ack_wait, int64_t max_deliver,
                            int64_t max_ack_pending, const ConsumerSpec& wanted);

class NatsConnection {
 public:
  // Outcomes of async publishes, recorded by nats.c's ack callbacks (its own thread).
  struct AsyncAcks {
    std::atomic<int64_t> failed{0};
    std::mutex mu;
    std::vector<std::string> stored;      // Nats-Msg-Ids, only with track_acks
    std::vector<std::string> duplicates;  // acknowledged as duplicates: stored before
  };

  // Connects (reconnecting forever afterwards). Error text names the URL and cause.
  // track_acks: remember the Nats-Msg-Id of every acknowledged async publish
  // (TakeAcknowledged), for callers that act only on what the stream stored.
  static Result<std::shared_ptr<NatsConnection>, std::string> Connect(const Config& config,
                                                                      const std::string& name,
                                                                      bool track_acks = false);
  ~NatsConnection();
  NatsConnection(const NatsConnection&) = delete;
  NatsConnection& operator=(const NatsConnection&) = delete;

  bool Connected() const;
  size_t MaxPayload() const;
  // Creates or updates the realtime, history and DLQ streams (SPEC §3).
  Result<Unit, std::string> EnsureStreams(const Config& config);
  Result<Unit, std::string> EnsureConsumer(const ConsumerSpec& spec);
  // False when the server answers that the stream does not exist (other errors: true).
  bool StreamExists(const std::string& stream);
  // False when the server answers that the consumer (or its stream) does not exist.
  bool ConsumerExists(const ConsumerSpec& spec);
  // Publishes and waits for the PubAck. Returns the stream sequence.
  Result<uint64_t, std::string> Publish(const std::string& subject, std::string_view data,
                                        const std::string& msg_id, const HeaderMap& headers);
  // Fire-and-forget JetStream publish for load generation; failures are counted by
  // PublishAsyncComplete.
  // max_wait > 0: a PubAck not back by then is reported as a failure (the error handler) and
  // no longer pending; 0: it stays pending until it comes (the context's default).
  Result<Unit, std::string> PublishAsync(
      const std::string& subject, std::string_view data, const std::string& msg_id,
      const HeaderMap& headers = {},
      std::chrono::milliseconds max_wait = std::chrono::milliseconds(0));
  // Async publishes that failed so far (JetStream error or timeout); reset by the call.
  int64_t TakeAsyncErrors();
  // With track_acks: the Nats-Msg-Ids of the async publishes acknowledged so far, those the
  // stream stored and those it acknowledged as duplicates (it held the event already); reset
  // by the call.
  struct Acknowledged {
    std::vector<std::string> stored;
    std::vector<std::string> duplicates;
  };
  Acknowledged TakeAcknowledged();
  Result<Unit, std::string> PublishAsyncComplete(std::chrono::milliseconds timeout);
  // One message of PublishAll.
  struct Outgoing {
    std::string subject;
    std::string_view data;
    std::string msg_id;  // Nats-Msg-Id: required, the stream drops repeats by it
    HeaderMap headers;
  };
  // Publishes all the messages with their acks awaited together, then returns each one's
  // outcome, as Publish would. When any of them failed or its ack did not come within 5 s,
  // each is published again and its ack awaited (the stream drops the repeats of those it
  // already stored, within its duplicate window), so that every outcome is exact; once one
  // of those fails while the connection is down, the rest fail without a try. Calls take
  // turns (the outcome of async publishes is per connection); not for connections with
  // track_acks.
  std::vector<Result<Unit, std::string>> PublishAll(std::span<const Outgoing> messages);
  // Drains subscriptions and closes (graceful shutdown).
  void Drain(std::chrono::milliseconds timeout);

  __natsConnection* raw() { return conn_; }
  __jsCtx* js() { return js_; }

 private:
  NatsConnection() = default;
  AsyncAcks async_acks_;
  std::mutex publish_all_mu_;
  __natsConnection* conn_ = nullptr;
  __jsCtx* js_ = nullptr;
};

// The pull requests a subscription has sent. A request may be answered until it expires,
// and its expiry runs from when the server registered it, which under load can be well after
// the client stopped waiting: shutdown waits them out (JetStreamSource::CollectLateDeliveries).
struct PullLog {
  uint64_t sent = 0;
  uint64_t waited_out = 0;  // requests [1, waited_out] can deliver nothing more
  std::chrono::milliseconds longest_expiry{0};
};

// A durable pull consumer (pipeline::EventSource, with its threading rules). SetRecovery and
// SetBatchByteBudget are called before the loop starts.
class JetStreamSource final : public pipeline::EventSource {
 public:
  // Binds to an existing durable pull consumer (see NatsConnection::EnsureConsumer).
  static Result<std::unique_ptr<JetStreamSource>, std::string> Bind(
      std::shared_ptr<NatsConnection> conn, const ConsumerSpec& spec);
  ~JetStreamSource() override;

  Result<pipeline::FetchedBatch, std::string> Fetch(int max,
                                                    std::chrono::milliseconds wait) override;
  void Settle(uint64_t token, std::span<const pipeline::Decision> decisions) override;
  void InProgress(uint64_t token) override;
  bool Connected() override;
  bool Lag(uint64_t* pending, uint64_t* ack_pending) override;
  // Runs `ensure` (create or update the streams and the consumer), then subscribes again.
  // Unsettled messages of the old subscription are dropped: the server redelivers them.
  bool Recover() override;
  pipeline::FetchedBatch FetchLate() override;
  void SetRecovery(std::function<Result<Unit, std::string>()> ensure) {
    ensure_ = std::move(ensure);
  }
  // Under backlog a batch is pulled in parts of at most kFetchPart messages, and no further
  // part is pulled once the batch holds `bytes` of payload (0 = no limit): a batch is held in
  // memory whole, and events may be up to MAX_EVENT_BYTES each. Parts are sized by the mean
  // message size seen (the first part of a batch by the previous batch's); a batch always
  // takes at least one message.
  // Pull requests carry no max_bytes: with nats-server 2.9 a redelivered message that does
  // not fit one makes the consumer step back a message (it is delivered again, the retried
  // one waits another AckWait), and a "409 Message Size Exceeds MaxBytes" meant for a request
  // the client gave up on fails the next fetch on the same inbox.
  void SetBatchByteBudget(size_t bytes) { byte_budget_ = bytes; }
  static constexpr int kFetchPart = 250;

 private:
  JetStreamSource() = default;
  std::function<Result<Unit, std::string>()> ensure_;
  std::shared_ptr<NatsConnection> conn_;
  ConsumerSpec spec_;
  __natsSubscription* sub_ = nullptr;
  std::mutex mu_;  // guards pending_ (InProgress comes from a heartbeat thread)
  uint64_t next_token_ = 1;
  std::map<uint64_t, std::vector<__natsMsg*>> pending_;
  // Waits out every pull request sent so far and returns what they delivered.
  std::vector<__natsMsg*> CollectLateDeliveries();
  // Pulls the rest of a batch whose first part came back full (see SetBatchByteBudget).
  void FetchRest(int max, std::chrono::milliseconds wait, std::vector<__natsMsg*>& owned);
  // Slack for a delivery that the server decided on just before a request expired.
  static constexpr std::chrono::milliseconds kLatePullMargin{100};
  PullLog pulls_;
  size_t byte_budget_ = 0;
  size_t mean_bytes_ = 0;  // mean payload size of the last batch
};

// Reads a stored message back by stream sequence (the DLQ worker's retries). Thread-safe.
class JetStreamMessageStore final : public dlq::MessageStore {
 public:
  explicit JetStreamMessageStore(std::shared_ptr<NatsConnection> conn) : conn_(std::move(conn)) {}
  Result<std::optional<pipeline::InboundMessage>, std::string> Get(const std::string& stream,
                                                                   uint64_t seq) override;

 private:
  std::shared_ptr<NatsConnection> conn_;
};

// Publishes dead letters to the DLQ stream and awaits their PubAcks. Thread-safe.
class JetStreamDeadLetterSink final : public pipeline::DeadLetterSink {
 public:
  explicit JetStreamDeadLetterSink(std::shared_ptr<NatsConnection> conn) : conn_(std::move(conn)) {}
  Result<Unit, std::string> Publish(const DeadLetter& letter) override;
  std::vector<Result<Unit, std::string>> PublishAll(std::span<const DeadLetter> letters) override;
  size_t MaxPayload() const override { return conn_->MaxPayload(); }

 private:
  std::shared_ptr<NatsConnection> conn_;
};

}  // namespace evp::nats
