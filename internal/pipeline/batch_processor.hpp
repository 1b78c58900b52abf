#pragma once
// The heart of the processor: one fetched batch in, one decision per message out.
//   decode -> validate -> route -> tenant checks -> one write for the whole batch -> DLQ
// Fatal events are published to the DLQ (acknowledged by JetStream) before their message is
// acked; transient failures become delayed NAKs; "not yet" updates wait inside
// ORDERING_GRACE. Untrusted input never throws through here. One instance per consumer loop:
// one Prepare may run concurrently with one Complete (see BatchProcessor); nothing else may
// overlap.
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "observability/metrics.hpp"
#include "pipeline/ports.hpp"
#include "validation/schema_registry.hpp"

namespace evp::pipeline {

// Remembers when each event was first tried, for ORDERING_GRACE (in memory: a restart only
// lengthens the window). Time the database was unreachable does not count towards the
// window (SPEC §11: an outage of any length exhausts nothing). Bounded: entries older than
// the horizon are dropped. Not thread-safe: used by Complete alone (and by
// DatabaseWasUnavailable, which the loop calls while no batch is being written).
class GraceTracker {
 public:
  explicit GraceTracker(std::chrono::milliseconds horizon) : horizon_(horizon) {}
  std::chrono::steady_clock::time_point FirstSeen(const std::string& key,
                                                  std::chrono::steady_clock::time_point now);
  // Time counted towards the window: from the first try that found the row missing (a try
  // whose write failed found nothing), or from `not_before` when that is later, minus
  // database outages since.
  std::chrono::milliseconds Waited(const std::string& key,
                                   std::chrono::steady_clock::time_point now,
                                   std::chrono::steady_clock::time_point not_before = {});
  // The database was unreachable for `outage`: every open window is that much longer.
  void Extend(std::chrono::milliseconds outage);
  void Forget(const std::string& key) { first_seen_.erase(key); }
  size_t size() const { return first_seen_.size(); }

 private:
  struct Entry {
    std::chrono::steady_clock::time_point first;
    std::optional<std::chrono::steady_clock::time_point> missing;  // the window's start
    std::chrono::milliseconds paused{0};
  };
  std::chrono::milliseconds horizon_;
  std::unordered_map<std::string, Entry> first_seen_;
};

// The events this processor holds in delayed NAKs because their row does not exist yet. Each
// keeps a slot of the consumer's MaxAckPending until it comes back: held by the thousand (a
// backlog of updates published before their rows), they would keep the very rows they wait
// for from being delivered. Entries end when the event is decided, or lapse shortly after its
// redelivery was due (it may have gone to another replica). Not thread-safe: Complete alone.
class WaitingEvents {
 public:
  // True when `key` was not held already.
  bool Hold(const std::string& key, std::chrono::steady_clock::time_point until) {
    return until_.insert_or_assign(key, until).second;
  }
  // True when `key` was held.
  bool Release(const std::string& key) { return until_.erase(key) > 0; }
  bool Holds(const std::string& key) const { return until_.contains(key); }
  // Entries not lapsed at `now` (drops the lapsed ones).
  size_t Held(std::chrono::steady_clock::time_point now) {
    std::erase_if(until_, [now](const auto& e) { return e.second < now; });
    return until_.size();
  }

 private:
  std::unordered_map<std::string, std::chrono::steady_clock::time_point> until_;
};

struct BatchStats {
  size_t applied = 0;
  size_t stale = 0;
  size_t dead_lettered = 0;  // dead letters stored: whole events and history items
  size_t retried = 0;
  size_t not_yet = 0;              // updates retried because their row does not exist yet
  std::string not_yet_key;         // the missing row of the last of them
  bool store_unavailable = false;  // a transient database error happened: pause fetching
  std::string last_error;          // text of the last transient database error
};

// One batch between its two phases: what Prepare learned, for Complete.
struct PreparedBatch {
  struct Item {
    size_t message;                     // index in the batch
    std::optional<int64_t> item_index;  // history item index
  };
  std::vector<handlers::Mutation> mutations;
  std::vector<Item> items;           // parallel to mutations
  std::vector<EventType> types;      // per message (valid when routed)
  std::vector<std::string> tenants;  // per message
  std::vector<bool> done;            // decision already final (dead-lettered, skipped)
  std::vector<Decision> decisions;
  BatchStats stats;
};

// Threads: Process, Complete and DatabaseWasUnavailable never overlap; one Prepare may run
// concurrently with one Complete (they share only the thread-safe ports and a locked RNG).
class BatchProcessor final : public BatchHandler {
 public:
  BatchProcessor(const Config& config, const validation::SchemaRegistry& schemas, EventStore& store,
                 DeadLetterSink& dlq, ExhaustedStore& exhausted, Clock& clock,
                 observability::Metrics& metrics, uint64_t seed = std::random_device{}());

  // Decides every message of the batch; decisions[i] belongs to batch[i].
  std::vector<Decision> Process(std::span<const InboundMessage> batch) override;

  // The two phases of Process, so a loop can prepare the next batch while this one is
  // written. Prepare decodes, validates and dead-letters bad events without touching the
  // database; Complete creates tenant schemas, writes, and decides the rest. Complete calls
  // must come in batch order; one Prepare may run concurrently with one Complete.
  std::unique_ptr<PreparedBatch> Prepare(std::span<const InboundMessage> batch);
  std::vector<Decision> Complete(std::span<const InboundMessage> batch, PreparedBatch& prepared);
  bool StoreUnavailable() const override { return stats_.store_unavailable; }
  void DatabaseWasUnavailable(std::chrono::milliseconds outage) override { grace_.Extend(outage); }
  const BatchStats& last_stats() const { return stats_; }

 private:
  std::vector<Decision> Finish(PreparedBatch& work);
  // False for a dead letter too large for a NATS message: it is recorded directly.
  bool FitsDlq(const DeadLetter& letter) const;
  // Writes a dead letter that does not fit a NATS message to exhausted_events; false when
  // that failed.
  bool RecordOversized(const DeadLetter& letter);
  // A dead letter of message `message` of the batch, published with the others of the same
  // phase (Prepare, Complete) at its end: a burst of invalid events, or of updates whose row
  // never came, costs one round trip to JetStream, not one per event. `whole`: the message
  // itself (else one history item of it).
  struct QueuedDeadLetter {
    DeadLetter letter;
    size_t message;
    bool whole;
    std::string grace_key = {};  // the event's ORDERING_GRACE entry, forgotten once stored
  };
  // first_failed_ms: when the event first failed (0: now).
  DeadLetter NewDeadLetter(const InboundMessage& msg, const std::string& company_id,
                           const Failure& failure, ErrorClass cls, int64_t first_failed_ms);
  // Publishes the queued dead letters. A message whose letter is not stored is redelivered
  // after a delay; the others keep their decision.
  void SendDeadLetters(std::vector<QueuedDeadLetter>& queued, std::span<const InboundMessage> batch,
                       PreparedBatch& work);
  // Complete without sending its dead letters: creates tenant schemas, writes, decides, and
  // queues the dead letters of the events the database refused or that ran out of time.
  void Write(std::span<const InboundMessage> batch, PreparedBatch& work,
             std::vector<QueuedDeadLetter>& dead_letters);
  std::chrono::milliseconds NakDelay(uint64_t delivered);

  const Config& config_;
  const validation::SchemaRegistry& schemas_;
  EventStore& store_;
  DeadLetterSink& dlq_;
  ExhaustedStore& exhausted_;
  Clock& clock_;
  observability::Metrics& metrics_;
  std::mutex rng_mu_;
  std::mt19937_64 rng_;
  GraceTracker grace_;
  WaitingEvents waiting_;
  // Per tenant, until when an event of its whose write failed may still be in its transient
  // backoff (the failure plus NAK_MAX_DELAY). An update of that tenant that finds its row
  // missing meanwhile may be waiting for a row caught in the same failures: its ordering
  // grace starts counting only then. Written by Write alone.
  std::unordered_map<std::string, std::chrono::steady_clock::time_point> backoff_until_;
  void NoteTransientFailure(const std::string& company_id);
  BatchStats stats_;
};

}  // namespace evp::pipeline
