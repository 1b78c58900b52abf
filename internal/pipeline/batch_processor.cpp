#include "pipeline/batch_processor.hpp"

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "core/backoff.hpp"
#include "handlers/mutation.hpp"
#include "observability/logging.hpp"
#include "routing/subject.hpp"
#include "validation/decoder.hpp"
#include "validation/json_spans.hpp"

namespace evp::pipeline {

using observability::EventOutcome;
using observability::LogWarn;
using std::chrono::milliseconds;

std::chrono::steady_clock::time_point GraceTracker::FirstSeen(
    const std::string& key, std::chrono::steady_clock::time_point now) {
  auto [it, inserted] = first_seen_.try_emplace(key, Entry{now, std::nullopt, milliseconds(0)});
  if (inserted && first_seen_.size() > 100'000) {
    // Keys of events that were finally handled elsewhere (another replica) linger; drop the
    // ones far past any grace window.
    for (auto i = first_seen_.begin(); i != first_seen_.end();) {
      i = (now - i->second.first > horizon_ + i->second.paused) ? first_seen_.erase(i)
                                                                : std::next(i);
    }
    it = first_seen_.find(key);
  }
  return it->second.first;
}

std::chrono::milliseconds GraceTracker::Waited(const std::string& key,
                                               std::chrono::steady_clock::time_point now,
                                               std::chrono::steady_clock::time_point not_before) {
  FirstSeen(key, now);
  Entry& e = first_seen_.at(key);
  if (!e.missing) e.missing = now;
  const auto start = std::max(*e.missing, not_before);
  return std::max(milliseconds(0),
                  std::chrono::duration_cast<milliseconds>(now - start) - e.paused);
}

void GraceTracker::Extend(std::chrono::milliseconds outage) {
  for (auto& [key, entry] : first_seen_) {
    if (entry.missing) entry.paused += outage;  // a window not open yet loses nothing
  }
}

BatchProcessor::BatchProcessor(const Config& config, const validation::SchemaRegistry& schemas,
                               EventStore& store, DeadLetterSink& dlq, ExhaustedStore& exhausted,
                               Clock& clock, observability::Metrics& metrics, uint64_t seed)
    : config_(config),
      schemas_(schemas),
      store_(store),
      dlq_(dlq),
      exhausted_(exhausted),
      clock_(clock),
      metrics_(metrics),
      rng_(seed),
      grace_(config.ordering_grace * 4 + std::chrono::minutes(1)) {}

milliseconds BatchProcessor::NakDelay(uint64_t delivered) {
  std::lock_guard lock(rng_mu_);  // Prepare and Complete may run at once
  return BackoffDelay(config_.nak_base_delay, config_.nak_max_delay,
                      static_cast<int>(std::min<uint64_t>(delivered, 30)), rng_);
}

void BatchProcessor::NoteTransientFailure(const std::string& company_id) {
  const auto until = clock_.Now() + config_.nak_max_delay;
  auto [it, inserted] = backoff_until_.try_emplace(company_id, until);
  if (!inserted) it->second = std::max(it->second, until);
}

bool BatchProcessor::FitsDlq(const DeadLetter& letter) const {
  // A dead letter must fit in one NATS message with its headers; larger ones (events between
  // MAX_EVENT_BYTES and the server's max_payload) are recorded directly.
  constexpr size_t kHeaderAllowance = 8 * 1024;
  return letter.original.size() + kHeaderAllowance <= dlq_.MaxPayload();
}

bool BatchProcessor::RecordOversized(const DeadLetter& letter) {
  auto r = exhausted_.RecordExhausted(letter, letter.reason);
  if (!r.ok()) {
    LogWarn("cannot record oversized dead letter",
            {{"subject", letter.source_subject}, {"error", r.error().message}});
    return false;
  }
  if (auto code = letter.Code()) metrics_.CountExhausted(*code, letter.error_class);
  return true;
}

DeadLetter BatchProcessor::NewDeadLetter(const InboundMessage& msg, const std::string& company_id,
                                         const Failure& failure, ErrorClass cls,
                                         int64_t first_failed_ms) {
  DeadLetter dl;
  dl.original = msg.data;
  dl.source_subject = msg.subject;
  dl.company_id = company_id;
  dl.error_class = cls;
  dl.reason = failure.Reason();
  dl.attempts = 1;
  dl.last_failed_ms = clock_.UnixMillis();
  dl.first_failed_ms = first_failed_ms > 0 ? first_failed_ms : dl.last_failed_ms;
  dl.source_stream = msg.stream;
  dl.stream_seq = msg.stream_seq;
  dl.published_ns = msg.publish_time_ns;
  dl.orig_msg_id = msg.msg_id;
  dl.trace_id = TraceIdOf(msg.headers);
  LogWarn("event dead-lettered", {{"company_id", company_id},
                                  {"subject", msg.subject},
                                  {"stream_seq", msg.stream_seq},
                                  {"delivered", msg.delivered},
                                  {"event_id", msg.msg_id},
                                  {"trace_id", dl.trace_id},
                                  {"reason", dl.reason}});
  return dl;
}

void BatchProcessor::SendDeadLetters(std::vector<QueuedDeadLetter>& queued,
                                     std::span<const InboundMessage> batch, PreparedBatch& work) {
  if (queued.empty()) return;
  std::vector<bool> sent(queued.size(), false);
  std::vector<DeadLetter> letters;  // those that fit in a NATS message
  std::vector<size_t> of;           // their index in queued
  for (size_t k = 0; k < queued.size(); ++k) {
    if (!FitsDlq(queued[k].letter)) {
      sent[k] = RecordOversized(queued[k].letter);
      continue;
    }
    letters.push_back(std::move(queued[k].letter));
    of.push_back(k);
  }
  if (!letters.empty()) {
    std::vector<Result<Unit, std::string>> published = dlq_.PublishAll(letters);
    for (size_t j = 0; j < letters.size(); ++j) {
      if (j < published.size() && published[j].ok()) {
        sent[of[j]] = true;
        if (auto code = letters[j].Code()) metrics_.CountDeadLetter(*code, letters[j].error_class);
      } else {
        LogWarn("DLQ publish failed; the event will be redelivered",
                {{"subject", letters[j].source_subject},
                 {"error", j < published.size() ? published[j].error() : "no outcome"}});
      }
    }
  }
  for (size_t k = 0; k < queued.size(); ++k) {
    const size_t i = queued[k].message;
    if (sent[k]) {
      ++work.stats.dead_lettered;
      // Kept while the letter is not stored: the event's next delivery is still past its
      // grace and is dead-lettered at once.
      if (!queued[k].grace_key.empty()) {
        grace_.Forget(queued[k].grace_key);
        waiting_.Release(queued[k].grace_key);
      }
      continue;
    }
    // Not stored: the whole message comes again (its valid history items are rewritten
    // idempotently).
    work.decisions[i] = Decision::Nak(NakDelay(batch[i].delivered));
    if (queued[k].whole) ++work.stats.retried;
  }
  queued.clear();
}

std::vector<Decision> BatchProcessor::Process(std::span<const InboundMessage> batch) {
  auto prepared = Prepare(batch);
  return Complete(batch, *prepared);
}

std::unique_ptr<PreparedBatch> BatchProcessor::Prepare(std::span<const InboundMessage> batch) {
  auto owned = std::make_unique<PreparedBatch>();
  PreparedBatch& work = *owned;
  work.decisions.assign(batch.size(), Decision::Ack());
  work.types.resize(batch.size(), EventType::kChatsUpsert);
  work.tenants.resize(batch.size());
  work.done.assign(batch.size(), false);
  const int64_t now_unix = clock_.UnixMillis() / 1000;
  std::vector<QueuedDeadLetter> dead_letters;

  // 1. Route, decode and validate every message; build its mutations.
  for (size_t i = 0; i < batch.size(); ++i) {
    const InboundMessage& msg = batch[i];
    if (msg.delivered > 1) metrics_.CountRedelivery();
    if (msg.delivered == 1 && msg.headers.count(dlq_headers::kRedriveOf) > 0) {
      metrics_.CountRedriven();
    }
    auto route = routing::ParseSubject(msg.subject);
    if (!route.ok()) {
      work.done[i] = true;
      // v1.<domain>.<action>.<another deployment's tenant>: that deployment records it.
      // (With missing or extra tokens the last one is no tenant: every deployment does.)
      if (auto owner = routing::SubjectTenant(msg.subject);
          owner && !config_.AllowsTenant(*owner)) {
        metrics_.CountEvent("unknown", EventOutcome::kOtherTenant, *owner);
        continue;
      }
      dead_letters.push_back({NewDeadLetter(msg, route.error().raw_tenant, route.error().failure,
                                            ErrorClass::kFatal, 0),
                              i, true});
      metrics_.CountEvent("unknown", EventOutcome::kDeadLettered, route.error().raw_tenant);
      continue;
    }
    const EventType type = route->type;
    const std::string& company = route->company_id;
    work.types[i] = type;
    work.tenants[i] = company;
    const std::string_view type_name = EventTypeName(type);
    auto fail = [&](const Failure& f) {
      work.done[i] = true;
      dead_letters.push_back({NewDeadLetter(msg, company, f, ErrorClass::kFatal, 0), i, true});
      metrics_.CountEvent(type_name, EventOutcome::kDeadLettered, company);
    };
    if (!config_.AllowsTenant(company)) {
      work.done[i] = true;
      metrics_.CountEvent(type_name, EventOutcome::kOtherTenant, company);
      continue;
    }
    const int64_t publish_seconds = msg.publish_time_ns / 1'000'000'000;
    // JSON text carries U+0000 only as the escape \u0000: without it, skip that walk.
    const bool may_hold_nul = msg.data.find("\\u0000") != std::string::npos;
    auto mismatch = [&](const nlohmann::json& obj) -> std::optional<Failure> {
      auto it = obj.find("company_id");
      if (it != obj.end() && it->is_string() && it->get<std::string>() != company) {
        return Failure{ReasonCode::kTenantMismatch,
                       "payload company_id '" + it->get<std::string>() +
                           "' does not match subject tenant '" + company + "'"};
      }
      return std::nullopt;
    };
    // History: each item is judged alone; a bad item is dead-lettered by itself, with its
    // exact text when known (`text`), else a re-serialisation of `item`.
    auto item_failed = [&](size_t j, std::string original, const Failure& f) {
      DeadLetter dl;
      dl.original = std::move(original);
      dl.source_subject = msg.subject;
      dl.company_id = company;
      dl.error_class = ErrorClass::kFatal;
      dl.reason = f.Reason();
      dl.first_failed_ms = dl.last_failed_ms = clock_.UnixMillis();
      dl.source_stream = msg.stream;
      dl.stream_seq = msg.stream_seq;
      dl.published_ns = msg.publish_time_ns;
      dl.orig_msg_id = msg.msg_id;
      dl.item_index = static_cast<int64_t>(j);
      dl.trace_id = TraceIdOf(msg.headers);
      LogWarn("history item dead-lettered", {{"company_id", company},
                                             {"subject", msg.subject},
                                             {"stream_seq", msg.stream_seq},
                                             {"event_id", msg.msg_id},
                                             {"trace_id", dl.trace_id},
                                             {"item_index", j},
                                             {"reason", dl.reason}});
      dead_letters.push_back({std::move(dl), i, false});
      metrics_.CountEvent(EventTypeName(HistoryItemType(type)), EventOutcome::kDeadLettered,
                          company);
      metrics_.CountHistoryItems(EventTypeName(type), EventOutcome::kDeadLettered);
    };
    // `text` (exact, may be empty) is looked up only when needed: `text_of()`.
    auto add_item = [&](size_t j, const nlohmann::json& item, auto text_of) {
      const EventType item_type = HistoryItemType(type);
      std::optional<Failure> f =
          validation::ValidateEvent(schemas_, item_type, item, now_unix, may_hold_nul, company);
      if (!f) f = mismatch(item);
      if (f) {
        std::string_view text = text_of();
        item_failed(j,
                    !text.empty()
                        ? std::string(text)
                        : item.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                    *f);
        return;
      }
      Version v = handlers::EventVersion(item_type, item, publish_seconds, Source::kHistory,
                                         msg.stream_seq);
      const std::string_view text =
          handlers::NeedsExactText(item_type, item) ? text_of() : std::string_view();
      work.mutations.push_back(handlers::BuildMutation(item_type, item, company, v, text));
      work.items.push_back({i, static_cast<int64_t>(j)});
    };
    auto decoded = validation::DecodeEvent(msg.data, static_cast<size_t>(config_.max_event_bytes));
    if (!decoded.ok()) {
      // An envelope the parser refused as a whole may still hold good items (one item with
      // invalid UTF-8, a lone surrogate, a syntax error): judge each item alone.
      std::optional<validation::SalvagedEnvelope> salvaged;
      if (IsHistory(type) && decoded.error().code == ReasonCode::kMalformedJson) {
        salvaged = validation::SalvageArrayElementSpans(msg.data, HistoryArrayKey(type));
      }
      if (salvaged && salvaged->company_id) {
        // The envelope's own company_id must be a valid string equal to the subject's tenant.
        const std::string_view raw = *salvaged->company_id;
        auto id =
            raw.starts_with('"') ? nlohmann::json::parse(raw, nullptr, false) : nlohmann::json();
        if (!id.is_string() || id.get_ref<const std::string&>() != company) salvaged.reset();
      }
      if (!salvaged) {
        fail(decoded.error());
        continue;
      }
      for (size_t j = 0; j < salvaged->elements.size(); ++j) {
        const std::string_view text = salvaged->elements[j];
        auto item = validation::DecodeEvent(text, static_cast<size_t>(config_.max_event_bytes));
        if (!item.ok()) {
          item_failed(j, std::string(text), item.error());
          continue;
        }
        add_item(j, item.value(), [text] { return text; });
      }
      continue;
    }
    const nlohmann::json& doc = decoded.value();
    // `company` passed routing's tenant rule (ParseSubject).
    if (auto invalid =
            validation::ValidateEvent(schemas_, type, doc, now_unix, may_hold_nul, company)) {
      fail(*invalid);
      continue;
    }
    if (auto f = mismatch(doc)) {
      fail(*f);
      continue;
    }
    if (!IsHistory(type)) {
      Version v =
          handlers::EventVersion(type, doc, publish_seconds, Source::kRealtime, msg.stream_seq);
      work.mutations.push_back(handlers::BuildMutation(type, doc, company, v, msg.data));
      work.items.push_back({i, std::nullopt});
      continue;
    }
    const auto& items = doc.at(std::string(HistoryArrayKey(type)));
    // The exact text of each item, found only once an item fails or needs its exact numbers.
    std::optional<std::vector<std::string_view>> item_texts;
    bool item_texts_searched = false;
    auto item_text = [&](size_t j) -> std::string_view {
      if (!item_texts_searched) {
        item_texts_searched = true;
        item_texts = validation::ArrayElementSpans(msg.data, HistoryArrayKey(type));
        if (item_texts && item_texts->size() != items.size()) item_texts.reset();
      }
      return item_texts ? (*item_texts)[j] : std::string_view();
    };
    for (size_t j = 0; j < items.size(); ++j) {
      add_item(j, items[j], [&item_text, j] { return item_text(j); });
    }
  }
  SendDeadLetters(dead_letters, batch, work);
  return owned;
}

std::vector<Decision> BatchProcessor::Complete(std::span<const InboundMessage> batch,
                                               PreparedBatch& work) {
  std::vector<QueuedDeadLetter> dead_letters;
  Write(batch, work, dead_letters);
  SendDeadLetters(dead_letters, batch, work);
  return Finish(work);
}

void BatchProcessor::Write(std::span<const InboundMessage> batch, PreparedBatch& work,
                           std::vector<QueuedDeadLetter>& dead_letters) {
  std::vector<Decision>& decisions = work.decisions;
  // Queues the dead letter of message `i`. Its decision is left as it is (an ack, unless a
  // history item's letter already failed) and becomes a delayed NAK if this letter is not
  // stored (SendDeadLetters).
  const auto dead_letter = [&](size_t i, const std::string& company, const Failure& failure,
                               ErrorClass cls, int64_t first_failed_ms = 0) {
    dead_letters.push_back(
        {NewDeadLetter(batch[i], company, failure, cls, first_failed_ms), i, true});
  };
  // 2. Make sure every tenant of the batch has its schema (cached after the first time).
  // Also the tenant of an event with nothing to write (an empty history batch, or one whose
  // items were all refused): first sight creates the schema, and a case collision is refused
  // whatever the event holds.
  std::set<std::string> tenants;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!work.done[i]) tenants.insert(work.tenants[i]);
  }
  store_.PrepareTenants({tenants.begin(), tenants.end()});
  std::set<std::string> unavailable;
  for (const std::string& t : tenants) {
    auto r = store_.EnsureTenant(t);
    if (r.ok()) continue;
    unavailable.insert(t);
    if (r.error().kind != StoreErrorKind::kTransient) {
      // A case collision is an invalid tenant; any other refusal to create the schema can
      // never succeed either.
      const ReasonCode code = r.error().kind == StoreErrorKind::kCollision
                                  ? ReasonCode::kInvalidTenant
                                  : ReasonCode::kConstraintViolation;
      if (code == ReasonCode::kConstraintViolation) metrics_.CountDbError("fatal");
      for (size_t i = 0; i < batch.size(); ++i) {
        if (work.done[i] || work.tenants[i] != t) continue;
        work.done[i] = true;
        dead_letter(i, t, {code, r.error().message}, ErrorClass::kFatal);
        metrics_.CountEvent(EventTypeName(work.types[i]), EventOutcome::kDeadLettered, t);
      }
    } else {
      work.stats.last_error = r.error().message;
      metrics_.CountDbError("transient");
      work.stats.store_unavailable = true;
      NoteTransientFailure(t);
      for (size_t i = 0; i < batch.size(); ++i) {
        if (work.done[i] || work.tenants[i] != t) continue;
        work.done[i] = true;
        decisions[i] = Decision::Nak(NakDelay(batch[i].delivered));
        ++work.stats.retried;
        metrics_.CountEvent(EventTypeName(work.types[i]), EventOutcome::kTransientRetried, t);
      }
    }
  }
  std::vector<handlers::Mutation> to_apply;
  std::vector<size_t> origin;  // index into work.items
  to_apply.reserve(work.mutations.size());
  for (size_t k = 0; k < work.mutations.size(); ++k) {
    if (work.done[work.items[k].message]) continue;
    to_apply.push_back(std::move(work.mutations[k]));
    origin.push_back(k);
  }
  if (to_apply.empty()) return;

  // 3. One write for the whole batch.
  auto applied = store_.Apply(std::move(to_apply));
  if (!applied.ok()) {
    const bool transient = applied.error().kind != StoreErrorKind::kFatal;
    work.stats.last_error = applied.error().message;
    metrics_.CountDbError(transient ? "transient" : "fatal");
    work.stats.store_unavailable = work.stats.store_unavailable || transient;
    LogWarn("batch write failed; messages will be redelivered",
            {{"error", applied.error().message}, {"messages", batch.size()}});
    std::set<size_t> seen;
    for (size_t k : origin) {
      size_t i = work.items[k].message;
      if (!seen.insert(i).second) continue;
      if (transient) NoteTransientFailure(work.tenants[i]);
      const InboundMessage& msg = batch[i];
      if (msg.delivered >= static_cast<uint64_t>(config_.max_deliver)) {
        dead_letter(i, work.tenants[i],
                    {ReasonCode::kRetriesExhausted, "failed " + std::to_string(msg.delivered) +
                                                        " deliveries: " + applied.error().message},
                    ErrorClass::kRetryable);
        metrics_.CountEvent(EventTypeName(work.types[i]), EventOutcome::kDeadLettered,
                            work.tenants[i]);
      } else {
        decisions[i] = Decision::Nak(NakDelay(msg.delivered));
        ++work.stats.retried;
        metrics_.CountEvent(EventTypeName(work.types[i]), EventOutcome::kTransientRetried,
                            work.tenants[i]);
      }
    }
    return;
  }

  // 4. Per message: fold the results of its mutations into one decision.
  const int64_t commit_ms = clock_.UnixMillis();
  const auto now = clock_.Now();
  std::vector<std::optional<ApplyResult>> per_message(batch.size());
  // Items of history batches by outcome (a batch counts once in evp_events_total).
  std::map<std::pair<EventType, EventOutcome>, double> history_items;
  for (size_t n = 0; n < origin.size(); ++n) {
    const PreparedBatch::Item& item = work.items[origin[n]];
    const ApplyResult& r = applied.value()[n];
    const InboundMessage& msg = batch[item.message];
    const std::string& company = work.tenants[item.message];
    const EventType type = work.types[item.message];
    if (r.outcome == ApplyOutcome::kFatal) metrics_.CountDbError("fatal");  // an event or item
    if (item.item_index) {
      if (r.outcome == ApplyOutcome::kApplied) ++history_items[{type, EventOutcome::kApplied}];
      if (r.outcome == ApplyOutcome::kStale) ++history_items[{type, EventOutcome::kStale}];
      if (r.outcome == ApplyOutcome::kFatal) ++history_items[{type, EventOutcome::kDeadLettered}];
    }
    if (r.outcome == ApplyOutcome::kFatal && item.item_index) {
      // A history item the database refused: dead-letter that item alone.
      DeadLetter dl;
      const auto index = static_cast<size_t>(*item.item_index);
      // The item's exact bytes as they stand in the batch (SPEC §11); a re-serialisation
      // only when they cannot be found (the parser accepted what the span scanner does not).
      auto spans = validation::ArrayElementSpans(msg.data, HistoryArrayKey(type));
      if (spans && index < spans->size()) {
        dl.original = std::string((*spans)[index]);
      } else {
        const nlohmann::json envelope = nlohmann::json::parse(msg.data, nullptr, false);
        dl.original = envelope.at(std::string(HistoryArrayKey(type)))
                          .at(index)
                          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      }
      dl.source_subject = msg.subject;
      dl.company_id = company;
      dl.reason = Failure{ReasonCode::kConstraintViolation, r.message}.Reason();
      dl.first_failed_ms = dl.last_failed_ms = commit_ms;
      dl.source_stream = msg.stream;
      dl.stream_seq = msg.stream_seq;
      dl.published_ns = msg.publish_time_ns;
      dl.orig_msg_id = msg.msg_id;
      dl.item_index = item.item_index;
      dead_letters.push_back({std::move(dl), item.message, false});
      metrics_.CountEvent(EventTypeName(HistoryItemType(type)), EventOutcome::kDeadLettered,
                          company);
      continue;
    }
    auto& slot = per_message[item.message];
    // Precedence: fatal > retry > not-yet > applied > stale.
    auto rank = [](ApplyOutcome o) {
      switch (o) {
        case ApplyOutcome::kFatal:
          return 4;
        case ApplyOutcome::kRetry:
          return 3;
        case ApplyOutcome::kNotYet:
          return 2;
        case ApplyOutcome::kApplied:
          return 1;
        case ApplyOutcome::kStale:
          return 0;
      }
      return 0;
    };
    if (!slot || rank(r.outcome) > rank(slot->outcome)) slot = r;
  }
  for (const auto& [key, n] : history_items) {
    metrics_.CountHistoryItems(EventTypeName(key.first), key.second, n);
  }
  // At most a quarter of MaxAckPending waits in delayed NAKs here; beyond, an event whose row
  // is missing goes to the DLQ worker, which retries it inside the same grace window, and so
  // does an event whose write failed while other tenants' writes of the batch succeeded (a
  // tenant's table locked, dropped or altered): one tenant's retries must not hold every slot
  // and stop the others. A failure of every tenant is the database's: those wait here.
  const size_t waiting_cap = std::max<size_t>(1, static_cast<size_t>(config_.max_ack_pending) / 4);
  size_t waiting = waiting_.Held(now);
  // Up to two tenants with a write that went through; looked for only when a failing event
  // finds the quota full, so a batch without failures does not pay for it.
  std::optional<std::set<std::string_view>> succeeded;
  auto others_succeeded = [&](const std::string& company) {
    if (!succeeded) {
      succeeded.emplace();
      for (size_t i = 0; i < batch.size() && succeeded->size() < 2; ++i) {
        if (per_message[i] && (per_message[i]->outcome == ApplyOutcome::kApplied ||
                               per_message[i]->outcome == ApplyOutcome::kStale)) {
          succeeded->insert(work.tenants[i]);
        }
      }
    }
    return succeeded->size() > 1 || (succeeded->size() == 1 && !succeeded->contains(company));
  };
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!per_message[i]) continue;
    const InboundMessage& msg = batch[i];
    const std::string& company = work.tenants[i];
    const std::string_view type_name = EventTypeName(work.types[i]);
    const std::string grace_key = msg.stream + ":" + std::to_string(msg.stream_seq);
    switch (per_message[i]->outcome) {
      case ApplyOutcome::kApplied:
      case ApplyOutcome::kStale: {
        const bool applied_now = per_message[i]->outcome == ApplyOutcome::kApplied;
        metrics_.CountEvent(type_name, applied_now ? EventOutcome::kApplied : EventOutcome::kStale,
                            company);
        applied_now ? ++work.stats.applied : ++work.stats.stale;
        if (msg.publish_time_ns > 0) {
          const int64_t publish_ms = msg.publish_time_ns / 1'000'000;  // as coarse as commit_ms
          metrics_.end_to_end_latency().Observe(static_cast<double>(commit_ms - publish_ms) /
                                                1000.0);
        }
        grace_.Forget(grace_key);
        if (waiting_.Release(grace_key) && waiting > 0) --waiting;
        if (decisions[i].kind == Decision::Kind::kAck) decisions[i] = Decision::Ack();
        break;
      }
      case ApplyOutcome::kFatal:
        dead_letter(i, company, {ReasonCode::kConstraintViolation, per_message[i]->message},
                    ErrorClass::kFatal);
        metrics_.CountEvent(type_name, EventOutcome::kDeadLettered, company);
        break;
      case ApplyOutcome::kRetry: {
        NoteTransientFailure(company);
        work.stats.last_error = per_message[i]->message;
        metrics_.CountDbError("transient");
        // The first failure is noted (as a first try is for the ordering grace), so that the
        // dead letter tells when the trouble began, not when the deliveries ran out.
        const auto since_first =
            std::chrono::duration_cast<milliseconds>(now - grace_.FirstSeen(grace_key, now));
        const bool out_of_deliveries = msg.delivered >= static_cast<uint64_t>(config_.max_deliver);
        if (out_of_deliveries ||
            (waiting >= waiting_cap && !waiting_.Holds(grace_key) && others_succeeded(company))) {
          const std::string why =
              out_of_deliveries
                  ? "failed " + std::to_string(msg.delivered) + " deliveries: "
                  : "failed while other tenants' writes succeeded, and " + std::to_string(waiting) +
                        " events already wait for retries here (a quarter of MAX_ACK_PENDING): "
                        "handed to the DLQ worker: ";
          dead_letter(i, company, {ReasonCode::kRetriesExhausted, why + per_message[i]->message},
                      ErrorClass::kRetryable, clock_.UnixMillis() - since_first.count());
          dead_letters.back().grace_key = grace_key;
          metrics_.CountEvent(type_name, EventOutcome::kDeadLettered, company);
        } else {
          const milliseconds delay = NakDelay(msg.delivered);
          decisions[i] = Decision::Nak(delay);
          if (waiting_.Hold(grace_key, now + delay + std::chrono::seconds(1))) ++waiting;
          ++work.stats.retried;
          metrics_.CountEvent(type_name, EventOutcome::kTransientRetried, company);
        }
        break;
      }
      case ApplyOutcome::kNotYet: {
        // Since the first try, and of that, what counts towards the window (outages do not).
        const auto since_first =
            std::chrono::duration_cast<milliseconds>(now - grace_.FirstSeen(grace_key, now));
        const auto backoff = backoff_until_.find(company);
        const auto waited =
            grace_.Waited(grace_key, now,
                          backoff == backoff_until_.end() ? std::chrono::steady_clock::time_point{}
                                                          : backoff->second);
        if (waited >= config_.ordering_grace) {
          dead_letter(i, company,
                      {ReasonCode::kNotFoundAfterGrace,
                       std::string(type_name) + " target row (" + per_message[i]->message +
                           ") still missing after " + std::to_string(waited.count()) + " ms (" +
                           std::to_string(msg.delivered) + " deliveries)"},
                      ErrorClass::kFatal, clock_.UnixMillis() - since_first.count());
          dead_letters.back().grace_key = grace_key;
          metrics_.CountEvent(type_name, EventOutcome::kDeadLettered, company);
        } else if (const bool out_of_deliveries =
                       msg.delivered >= static_cast<uint64_t>(config_.max_deliver);
                   out_of_deliveries || (waiting >= waiting_cap && !waiting_.Holds(grace_key))) {
          // Out of deliveries but still inside the grace (the delays below are sized to
          // prevent this; a restart, which forgets first sights, can still get here), or too
          // many events wait here already: the DLQ worker retries it, and once the window
          // is over, a row still missing makes it not_found_after_grace there. The letter's
          // first failure is the window's start as counted here, so that the worker's window
          // ends where this one would have.
          const std::string why =
              out_of_deliveries ? "missing after " + std::to_string(msg.delivered) + " deliveries"
                                : "missing; " + std::to_string(waiting) +
                                      " events already wait for their rows here (a quarter of "
                                      "MAX_ACK_PENDING): handed to the DLQ worker";
          dead_letter(i, company,
                      {ReasonCode::kRetriesExhausted,
                       "target row (" + per_message[i]->message + ") " + why},
                      ErrorClass::kRetryable, clock_.UnixMillis() - waited.count());
          dead_letters.back().grace_key = grace_key;
          dead_letters.back().letter.waiting_for_row = per_message[i]->message;
          metrics_.CountEvent(type_name, EventOutcome::kDeadLettered, company);
        } else {
          // Spread the retries over the window so that MAX_DELIVER outlasts it: each delay is
          // at least the remaining time divided by the deliveries left, so the last delivery
          // comes after the window and ends as not_found_after_grace, never as an exhausted
          // delivery count.
          const milliseconds remaining = config_.ordering_grace - waited;
          const auto left =
              static_cast<int64_t>(static_cast<uint64_t>(config_.max_deliver) - msg.delivered);
          milliseconds delay = std::min(NakDelay(msg.delivered), remaining);
          delay = std::max(delay, milliseconds((remaining.count() + left - 1) / left));
          delay = std::max(delay, milliseconds(50));
          decisions[i] = Decision::Nak(delay);
          if (waiting_.Hold(grace_key, now + delay + std::chrono::seconds(1))) ++waiting;
          ++work.stats.retried;
          ++work.stats.not_yet;
          work.stats.not_yet_key = per_message[i]->message;
          metrics_.CountEvent(type_name, EventOutcome::kNotYetRetried, company);
        }
        break;
      }
    }
  }
}

std::vector<Decision> BatchProcessor::Finish(PreparedBatch& work) {
  // A history batch with nothing to write (an empty array, or every item dead-lettered) was
  // handled all the same: it counts once, as applied, like a batch whose items were written.
  std::vector<bool> wrote(work.decisions.size(), false);
  for (const PreparedBatch::Item& item : work.items) wrote[item.message] = true;
  for (size_t i = 0; i < work.decisions.size(); ++i) {
    if (work.done[i] || wrote[i] || !IsHistory(work.types[i])) continue;
    if (work.decisions[i].kind != Decision::Kind::kAck) continue;
    metrics_.CountEvent(EventTypeName(work.types[i]), EventOutcome::kApplied, work.tenants[i]);
    ++work.stats.applied;
  }
  stats_ = work.stats;
  return std::move(work.decisions);
}

}  // namespace evp::pipeline
