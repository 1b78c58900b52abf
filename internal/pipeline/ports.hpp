#pragma once
// Ports of the pipeline: what it needs from JetStream, PostgreSQL and the clock. Small pure
// interfaces with hand-written fakes in tests; adapters live in internal/nats and
// internal/postgres. Every error says what the caller should do next.
#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/dead_letter.hpp"
#include "core/result.hpp"
#include "handlers/mutation.hpp"

namespace evp::pipeline {

// One JetStream delivery, as plain data.
struct InboundMessage {
  std::string subject;
  std::string data;    // exact bytes
  std::string msg_id;  // Nats-Msg-Id header, may be empty
  std::string stream;
  uint64_t stream_seq = 0;
  uint64_t delivered = 1;  // NumDelivered, 1 on first delivery
  int64_t publish_time_ns = 0;
  HeaderMap headers;
};

// What to do with a delivery once the batch is done.
struct Decision {
  enum class Kind { kAck, kNak };
  Kind kind = Kind::kAck;
  std::chrono::milliseconds delay{0};  // for kNak
  static Decision Ack() { return {Kind::kAck, std::chrono::milliseconds(0)}; }
  static Decision Nak(std::chrono::milliseconds d) { return {Kind::kNak, d}; }
};

enum class StoreErrorKind {
  kTransient,  // database down, connection lost, serialization failure, deadlock: retry later
  kFatal,      // this data can never be written (constraint or data error)
  kCollision,  // tenant id collides with a registered id differing only by case
};
struct StoreError {
  StoreErrorKind kind;
  std::string message;
};

// Per-mutation result of a write.
// kRetry: this mutation hit a transient error of its own (deadlock, serialization failure,
// missing table) while the database stays reachable; its neighbours are unaffected.
enum class ApplyOutcome { kApplied, kStale, kNotYet, kRetry, kFatal };
struct ApplyResult {
  ApplyOutcome outcome = ApplyOutcome::kApplied;
  std::string message;  // for kFatal and kRetry: the database's reason
};

// The tenant tables. Thread-safe implementations may be shared by threads.
class EventStore {
 public:
  virtual ~EventStore() = default;
  // Creates the tenant's schema and tables on first sight; idempotent and cheap once known.
  virtual Result<Unit, StoreError> EnsureTenant(const std::string& company_id) = 0;
  // A hint before EnsureTenant is called for each of these: a store with several
  // connections may create the missing schemas in parallel. Errors surface in EnsureTenant.
  virtual void PrepareTenants(const std::vector<std::string>& /*company_ids*/) {}
  // Applies the mutations of one or more tenants in one transaction, in order; results[i]
  // belongs to mutations[i]. The store takes the mutations (callers move them in: a store
  // that spreads them over connections moves rather than copies them). An error of one
  // mutation must not fail the others: the store isolates it and reports kFatal or kRetry
  // for it alone. Losing the database (connection, shutdown) fails the whole call.
  virtual Result<std::vector<ApplyResult>, StoreError> Apply(
      std::vector<handlers::Mutation> mutations) = 0;
  // True when the database answers; used for readiness and to resume after an outage.
  virtual bool Ping() = 0;
};

// Publishes dead letters; returns once JetStream has acknowledged (or failed). Must be
// thread-safe: a batch's Prepare and the previous batch's Complete publish at the same time.
class DeadLetterSink {
 public:
  virtual ~DeadLetterSink() = default;
  virtual Result<Unit, std::string> Publish(const DeadLetter& letter) = 0;
  // Publishes several and returns once each is acknowledged or failed; results[i] belongs to
  // letters[i]. Sinks that can have them all in flight at once override it (a burst of
  // invalid events then costs one round trip, not one per event).
  virtual std::vector<Result<Unit, std::string>> PublishAll(std::span<const DeadLetter> letters) {
    std::vector<Result<Unit, std::string>> out;
    out.reserve(letters.size());
    for (const DeadLetter& letter : letters) out.push_back(Publish(letter));
    return out;
  }
  // Largest message the server accepts (headers included).
  virtual size_t MaxPayload() const = 0;
};

// Stores exhausted events directly (the DLQ worker, and the processor's fallback for dead
// letters too large for a NATS message). Idempotent on DeadLetter::IdempotencyKey(). Must be
// thread-safe, like DeadLetterSink.
class ExhaustedStore {
 public:
  virtual ~ExhaustedStore() = default;
  // Returns true when a row was inserted, false when it already existed.
  virtual Result<bool, StoreError> RecordExhausted(const DeadLetter& letter,
                                                   const std::string& final_reason) = 0;
  // Whether a row with this DeadLetter::IdempotencyKey() exists (resolved or not).
  virtual Result<bool, StoreError> IsRecorded(const std::string& idempotency_key) = 0;
};

// Time, injected so that tests control it. Must be thread-safe: Prepare and Complete read it
// at the same time.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual std::chrono::steady_clock::time_point Now() = 0;
  virtual int64_t UnixMillis() = 0;
};

class SystemClock final : public Clock {
 public:
  std::chrono::steady_clock::time_point Now() override { return std::chrono::steady_clock::now(); }
  int64_t UnixMillis() override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
};

}  // namespace evp::pipeline

namespace evp::pipeline {

// What one Fetch returned; settled by its token.
struct FetchedBatch {
  std::vector<InboundMessage> messages;
  uint64_t token = 0;
};

// A durable pull consumer, one per consumer loop. Several fetched batches may be outstanding
// at once (the loop prepares the next batch while the previous one is written); each is
// settled by its token. Threads: one Fetch may be in flight on another thread while the loop
// calls Settle and Lag; InProgress comes from heartbeat threads at any time; Recover and
// FetchLate only while no Fetch is in flight.
class EventSource {
 public:
  virtual ~EventSource() = default;
  // Up to max messages, waiting at most `wait`; no messages when none arrived. An error
  // means the connection or consumer is unusable right now (retry later).
  virtual Result<FetchedBatch, std::string> Fetch(int max, std::chrono::milliseconds wait) = 0;
  // Acks or NAKs the messages of one fetch; decisions[i] belongs to message i.
  virtual void Settle(uint64_t token, std::span<const Decision> decisions) = 0;
  // Tells JetStream the batch is still being worked on (extends AckWait). Thread-safe.
  virtual void InProgress(uint64_t token) = 0;
  virtual bool Connected() = 0;
  // Consumer lag figures for metrics; false when unavailable.
  virtual bool Lag(uint64_t* pending, uint64_t* ack_pending) = 0;
  // After fetches keep failing while connected: recreates what the source reads from (a
  // stream or consumer deleted by an operator) and binds to it again. True when re-bound.
  virtual bool Recover() { return false; }
  // At shutdown, after the last Fetch: waits until the pull requests already sent can deliver
  // nothing more, and returns what they delivered after their fetch had returned (often
  // nothing). Settle it like any batch.
  virtual FetchedBatch FetchLate() { return {}; }
};

}  // namespace evp::pipeline

namespace evp::pipeline {

// Turns one fetched batch into one decision per message (the processor, the DLQ worker).
class BatchHandler {
 public:
  virtual ~BatchHandler() = default;
  virtual std::vector<Decision> Process(std::span<const InboundMessage> batch) = 0;
  // True when the last batch hit a transient database error: the loop pauses fetching.
  virtual bool StoreUnavailable() const = 0;
  // The loop paused this long for the database: time-boxed waits (ORDERING_GRACE) must not
  // count it.
  virtual void DatabaseWasUnavailable(std::chrono::milliseconds /*outage*/) {}
};

}  // namespace evp::pipeline
