#include "nats/jetstream.hpp"

#include <nats/nats.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <sstream>
#include <thread>

#include "observability/logging.hpp"
#include "routing/subject.hpp"

namespace evp::nats {
namespace {

constexpr int64_t kNsPerMs = 1'000'000;

std::string StatusText(natsStatus s, jsErrCode jerr = static_cast<jsErrCode>(0)) {
  std::string out = natsStatus_GetText(s);
  const char* last = nats_GetLastError(nullptr);
  if (last != nullptr && *last != '\0') out += std::string(" (") + last + ")";
  if (jerr != 0) out += " [jetstream error " + std::to_string(static_cast<int>(jerr)) + "]";
  return out;
}

std::vector<std::string> SplitUrls(const std::string& urls) {
  std::vector<std::string> out;
  std::stringstream ss(urls);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

void OnDisconnected(natsConnection* nc, void*) {
  if (natsConnection_IsClosed(nc)) return;  // an orderly close, not an outage
  observability::LogWarn("NATS disconnected; reconnecting");
}
void OnReconnected(natsConnection*, void*) { observability::LogInfo("NATS reconnected"); }

void OnPublishAckError(jsCtx*, jsPubAckErr* pae, void* closure) {
  static_cast<NatsConnection::AsyncAcks*>(closure)->failed.fetch_add(1);
  observability::LogWarn("async publish failed",
                         {{"error", pae->ErrText != nullptr ? pae->ErrText : ""}});
}

// With ack tracking: every async publish ends here, acknowledged (pa) or failed (pae).
void OnPublishAck(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
  auto* acks = static_cast<NatsConnection::AsyncAcks*>(closure);
  const char* msg_id = nullptr;
  if (msg != nullptr) natsMsgHeader_Get(msg, "Nats-Msg-Id", &msg_id);
  if (pa != nullptr) {
    std::lock_guard lock(acks->mu);
    (pa->Duplicate ? acks->duplicates : acks->stored).emplace_back(msg_id != nullptr ? msg_id : "");
  } else {
    acks->failed.fetch_add(1);
    const char* text = pae != nullptr && pae->ErrText != nullptr ? pae->ErrText : "";
    observability::LogWarn("async publish failed",
                           {{"event_id", msg_id != nullptr ? msg_id : ""}, {"error", text}});
  }
  natsMsg_Destroy(msg);
}

// Fills the message's headers from a map (values are already free of CR/LF). An empty value
// is left out: nats.c reads a header line with an empty value as if the next line were its
// value, which loses that next header (readers treat a missing header as empty).
natsStatus SetHeaders(natsMsg* msg, const HeaderMap& headers) {
  for (const auto& [k, v] : headers) {
    if (v.empty()) continue;
    natsStatus s = natsMsgHeader_Set(msg, k.c_str(), v.c_str());
    if (s != NATS_OK) return s;
  }
  return NATS_OK;
}

// A message with its headers, and publish options carrying the Nats-Msg-Id (which must
// outlive the options). On failure *msg is null.
natsStatus NewMessage(natsMsg** msg, const std::string& subject, std::string_view data,
                      const HeaderMap& headers, const std::string& msg_id, jsPubOptions* po) {
  jsPubOptions_Init(po);
  if (!msg_id.empty()) po->MsgId = msg_id.c_str();
  natsStatus s =
      natsMsg_Create(msg, subject.c_str(), nullptr, data.data(), static_cast<int>(data.size()));
  if (s == NATS_OK) s = SetHeaders(*msg, headers);
  if (s != NATS_OK && *msg != nullptr) {
    natsMsg_Destroy(*msg);
    *msg = nullptr;
  }
  return s;
}

}  // namespace

Result<std::shared_ptr<NatsConnection>, std::string> NatsConnection::Connect(
    const Config& config, const std::string& name, bool track_acks) {
  std::shared_ptr<NatsConnection> c(new NatsConnection());
  natsOptions* opts = nullptr;
  natsStatus s = natsOptions_Create(&opts);
  std::vector<std::string> urls = SplitUrls(config.nats_url);
  std::vector<const char*> url_ptrs;
  url_ptrs.reserve(urls.size());
  for (const auto& u : urls) url_ptrs.push_back(u.c_str());
  if (s == NATS_OK)
    s = natsOptions_SetServers(opts, url_ptrs.data(), static_cast<int>(url_ptrs.size()));
  if (s == NATS_OK) s = natsOptions_SetName(opts, name.c_str());
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 500);
  if (s == NATS_OK) s = natsOptions_SetReconnectBufSize(opts, 64 * 1024 * 1024);
  if (s == NATS_OK) s = natsOptions_SetPingInterval(opts, 5000);
  if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(opts, OnDisconnected, nullptr);
  if (s == NATS_OK) s = natsOptions_SetReconnectedCB(opts, OnReconnected, nullptr);
  if (s == NATS_OK && !config.nats_user.empty()) {
    s = natsOptions_SetUserInfo(opts, config.nats_user.c_str(), config.nats_password.c_str());
  }
  if (s == NATS_OK && !config.nats_token.empty())
    s = natsOptions_SetToken(opts, config.nats_token.c_str());
  if (s == NATS_OK && !config.nats_creds_file.empty()) {
    s = natsOptions_SetUserCredentialsFromFiles(opts, config.nats_creds_file.c_str(), nullptr);
  }
  if (s == NATS_OK) s = natsConnection_Connect(&c->conn_, opts);
  natsOptions_Destroy(opts);
  if (s != NATS_OK)
    return Err{"cannot connect to NATS at " + MaskNatsUrls(config.nats_url) + ": " + StatusText(s)};
  jsOptions jso;
  jsOptions_Init(&jso);
  jso.Wait = 10000;
  if (track_acks) {
    jso.PublishAsync.AckHandler = OnPublishAck;
    jso.PublishAsync.AckHandlerClosure = &c->async_acks_;
  } else {
    jso.PublishAsync.ErrHandler = OnPublishAckError;
    jso.PublishAsync.ErrHandlerClosure = &c->async_acks_;
  }
  jso.PublishAsync.MaxPending = 4096;
  jso.PublishAsync.StallWait = 5000;
  s = natsConnection_JetStream(&c->js_, c->conn_, &jso);
  if (s != NATS_OK) return Err{"cannot open JetStream context: " + StatusText(s)};
  return c;
}

NatsConnection::~NatsConnection() {
  if (js_ != nullptr) jsCtx_Destroy(js_);
  if (conn_ != nullptr) {
    natsConnection_Close(conn_);
    natsConnection_Destroy(conn_);
  }
}

bool NatsConnection::Connected() const {
  return conn_ != nullptr && natsConnection_Status(conn_) == NATS_CONN_STATUS_CONNECTED;
}

size_t NatsConnection::MaxPayload() const {
  int64_t mp = natsConnection_GetMaxPayload(conn_);
  return mp > 0 ? static_cast<size_t>(mp) : 1024 * 1024;
}

Result<Unit, std::string> NatsConnection::EnsureStreams(const Config& config) {
  struct Def {
    std::string name;
    std::vector<const char*> subjects;
    std::chrono::milliseconds max_age;
  };
  const Def defs[] = {
      {config.realtime_stream,
       {"v1.chats.>", "v1.messages.>", "v1.contacts.>", "v1.connection.>"},
       config.realtime_max_age},
      {config.history_stream, {"v1.history.>"}, config.history_max_age},
      {config.dlq_stream, {"v1.dlq.>"}, config.dlq_max_age},
      // JetStream's own notices of events it stopped delivering: kept, so none is missed
      // while the DLQ worker is down.
      {config.advisory_stream,
       {"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"},
       config.dlq_max_age},
  };
  for (const Def& d : defs) {
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = d.name.c_str();
    sc.Subjects = const_cast<const char**>(d.subjects.data());
    sc.SubjectsLen = static_cast<int>(d.subjects.size());
    sc.Storage = js_FileStorage;
    sc.Retention = js_LimitsPolicy;
    sc.MaxAge = d.max_age.count() * kNsPerMs;
    sc.Replicas = config.stream_replicas;
    sc.Duplicates = int64_t{120'000} * kNsPerMs;
    jsStreamInfo* si = nullptr;
    jsErrCode jerr{};
    natsStatus s = js_AddStream(&si, js_, &sc, nullptr, &jerr);
    if (s != NATS_OK && jerr == JSStreamNameExistErr) {
      jerr = static_cast<jsErrCode>(0);
      s = js_UpdateStream(&si, js_, &sc, nullptr, &jerr);
    }
    if (si != nullptr) jsStreamInfo_Destroy(si);
    if (s != NATS_OK)
      return Err{"cannot create or update stream " + d.name + ": " + StatusText(s, jerr)};
  }
  return Unit{};
}

bool NatsConnection::StreamExists(const std::string& stream) {
  jsStreamInfo* si = nullptr;
  jsErrCode jerr{};
  natsStatus s = js_GetStreamInfo(&si, js_, stream.c_str(), nullptr, &jerr);
  if (si != nullptr) jsStreamInfo_Destroy(si);
  return !(s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr);
}

bool NatsConnection::ConsumerExists(const ConsumerSpec& spec) {
  jsConsumerInfo* ci = nullptr;
  jsErrCode jerr{};
  natsStatus s =
      js_GetConsumerInfo(&ci, js_, spec.stream.c_str(), spec.durable.c_str(), nullptr, &jerr);
  if (ci != nullptr) jsConsumerInfo_Destroy(ci);
  return !(s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr || jerr == JSStreamNotFoundErr);
}

std::string ConsumerChanges(std::chrono::milliseconds ack_wait, int64_t max_deliver,
                            int64_t max_ack_pending, const ConsumerSpec& wanted) {
  std::string out;
  auto note = [&out](const char* name, int64_t before, int64_t after, const char* unit) {
    if (before == after) return;
    out += (out.empty() ? "" : ", ") + std::string(name) + " " + std::to_string(before) + unit +
           " -> " + std::to_string(after) + unit;
  };
  note("ack_wait", ack_wait.count(), wanted.ack_wait.count(), "ms");
  note("max_deliver", max_deliver, wanted.max_deliver, "");
  note("max_ack_pending", max_ack_pending, wanted.max_ack_pending, "");
  return out;
}

Result<Unit, std::string> NatsConnection::EnsureConsumer(const ConsumerSpec& spec) {
  jsConsumerConfig cc;
  jsConsumerConfig_Init(&cc);
  cc.Durable = spec.durable.c_str();
  cc.AckPolicy = js_AckExplicit;
  cc.DeliverPolicy = js_DeliverAll;
  cc.AckWait = spec.ack_wait.count() * kNsPerMs;
  cc.MaxDeliver = spec.max_deliver;
  cc.MaxAckPending = spec.max_ack_pending;
  cc.MaxWaiting = 512;
  if (!spec.filter_subject.empty()) cc.FilterSubject = spec.filter_subject.c_str();
  // nats-server 2.9 applies a create with other settings to an existing durable consumer as
  // an update: look first, so that a replica changing them for all says so.
  jsConsumerInfo* before = nullptr;
  if (js_GetConsumerInfo(&before, js_, spec.stream.c_str(), spec.durable.c_str(), nullptr,
                         nullptr) == NATS_OK &&
      before != nullptr && before->Config != nullptr) {
    const jsConsumerConfig& was = *before->Config;
    const std::string changes = ConsumerChanges(std::chrono::milliseconds(was.AckWait / kNsPerMs),
                                                was.MaxDeliver, was.MaxAckPending, spec);
    if (!changes.empty()) {
      observability::LogWarn(
          "consumer settings changed by this process's configuration (every replica shares "
          "the consumer)",
          {{"consumer", spec.durable}, {"changes", changes}});
    }
  }
  if (before != nullptr) jsConsumerInfo_Destroy(before);
  jsConsumerInfo* ci = nullptr;
  jsErrCode jerr{};
  natsStatus s = js_AddConsumer(&ci, js_, spec.stream.c_str(), &cc, nullptr, &jerr);
  if (s != NATS_OK && (jerr == JSConsumerNameExistErr || jerr == 10148 /* exists, differs */)) {
    jerr = static_cast<jsErrCode>(0);
    s = js_UpdateConsumer(&ci, js_, spec.stream.c_str(), &cc, nullptr, &jerr);
  }
  if (ci != nullptr) jsConsumerInfo_Destroy(ci);
  if (s != NATS_OK) {
    return Err{"cannot create or update consumer " + spec.durable + " on " + spec.stream + ": " +
               StatusText(s, jerr)};
  }
  return Unit{};
}

Result<uint64_t, std::string> NatsConnection::Publish(const std::string& subject,
                                                      std::string_view data,
                                                      const std::string& msg_id,
                                                      const HeaderMap& headers) {
  natsMsg* msg = nullptr;
  jsPubOptions po;
  natsStatus s = NewMessage(&msg, subject, data, headers, msg_id, &po);
  jsPubAck* ack = nullptr;
  jsErrCode jerr{};
  if (s == NATS_OK) s = js_PublishMsg(&ack, js_, msg, &po, &jerr);
  natsMsg_Destroy(msg);
  if (s != NATS_OK) return Err{"publish to " + subject + " failed: " + StatusText(s, jerr)};
  uint64_t seq = ack != nullptr ? ack->Sequence : 0;
  if (ack != nullptr) jsPubAck_Destroy(ack);
  return seq;
}

Result<Unit, std::string> NatsConnection::PublishAsync(const std::string& subject,
                                                       std::string_view data,
                                                       const std::string& msg_id,
                                                       const HeaderMap& headers,
                                                       std::chrono::milliseconds max_wait) {
  natsMsg* msg = nullptr;
  jsPubOptions po;
  natsStatus s = NewMessage(&msg, subject, data, headers, msg_id, &po);
  if (max_wait.count() > 0) po.MaxWait = max_wait.count();
  if (s == NATS_OK) s = js_PublishMsgAsync(js_, &msg, &po);
  if (msg != nullptr) natsMsg_Destroy(msg);
  if (s != NATS_OK) return Err{"async publish to " + subject + " failed: " + StatusText(s)};
  return Unit{};
}

Result<Unit, std::string> NatsConnection::PublishAsyncComplete(std::chrono::milliseconds timeout) {
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = timeout.count();
  natsStatus s = js_PublishAsyncComplete(js_, &po);
  if (s != NATS_OK) return Err{"waiting for publish acks: " + StatusText(s)};
  return Unit{};
}

int64_t NatsConnection::TakeAsyncErrors() { return async_acks_.failed.exchange(0); }

std::vector<Result<Unit, std::string>> NatsConnection::PublishAll(
    std::span<const Outgoing> messages) {
  std::lock_guard lock(publish_all_mu_);
  // Failures counted before this call belong to earlier calls, which published again.
  TakeAsyncErrors();
  // A PubAck not back within kAckWait counts as a failure and stops being pending, so that a
  // lost reply cannot hold up later calls (the wait for completion covers every publish of
  // the connection still pending).
  constexpr std::chrono::milliseconds kAckWait{5'000};
  bool all_ok = true;
  for (const Outgoing& m : messages) {
    if (!PublishAsync(m.subject, m.data, m.msg_id, m.headers, kAckWait).ok()) {
      all_ok = false;
      break;
    }
  }
  // Also after a failed start: what is in flight settles before it is published again.
  const bool completed = PublishAsyncComplete(2 * kAckWait).ok();
  all_ok = all_ok && completed && TakeAsyncErrors() == 0;
  std::vector<Result<Unit, std::string>> out;
  out.reserve(messages.size());
  for (const Outgoing& m : messages) {
    if (all_ok) {
      out.emplace_back(Unit{});
      continue;
    }
    // Without a connection each publish would wait out its own timeout: the rest fail at
    // once (their events come again).
    if (!out.empty() && !out.back().ok() && !Connected()) {
      out.emplace_back(Err{"publish to " + m.subject + " failed: not connected to NATS"});
      continue;
    }
    auto r = Publish(m.subject, m.data, m.msg_id, m.headers);
    if (r.ok()) {
      out.emplace_back(Unit{});
    } else {
      out.emplace_back(Err{r.error()});
    }
  }
  return out;
}

NatsConnection::Acknowledged NatsConnection::TakeAcknowledged() {
  Acknowledged out;
  std::lock_guard lock(async_acks_.mu);
  out.stored.swap(async_acks_.stored);
  out.duplicates.swap(async_acks_.duplicates);
  return out;
}

void NatsConnection::Drain(std::chrono::milliseconds timeout) {
  if (conn_ == nullptr) return;
  // Draining runs in the background; wait for it to close the connection, so nothing of
  // nats.c is still working when the connection is destroyed.
  if (natsConnection_DrainTimeout(conn_, timeout.count()) != NATS_OK) return;
  const auto deadline = std::chrono::steady_clock::now() + timeout + std::chrono::seconds(1);
  while (!natsConnection_IsClosed(conn_) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// ---------------------------------------------------------------------------------------

namespace {

// A pull subscription bound to the durable consumer of `spec`.
Result<natsSubscription*, std::string> PullSubscribe(NatsConnection& conn,
                                                     const ConsumerSpec& spec) {
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = spec.stream.c_str();
  so.Consumer = spec.durable.c_str();
  so.ManualAck = true;
  jsErrCode jerr{};
  natsSubscription* sub = nullptr;
  natsStatus s = js_PullSubscribe(&sub, conn.js(), spec.filter_subject.c_str(),
                                  spec.durable.c_str(), nullptr, &so, &jerr);
  if (s != NATS_OK) {
    return Err{"cannot bind to consumer " + spec.durable + " on " + spec.stream + ": " +
               StatusText(s, jerr)};
  }
  return sub;
}

}  // namespace

Result<std::unique_ptr<JetStreamSource>, std::string> JetStreamSource::Bind(
    std::shared_ptr<NatsConnection> conn, const ConsumerSpec& spec) {
  auto sub = PullSubscribe(*conn, spec);
  if (!sub.ok()) return Err{sub.error()};
  std::unique_ptr<JetStreamSource> src(new JetStreamSource());
  src->conn_ = std::move(conn);
  src->spec_ = spec;
  src->sub_ = sub.value();
  return src;
}

namespace {

// One pull request that returns as soon as the server has delivered what is available (a
// "no wait" request with an expiry): a full batch under backlog, fewer messages at once when
// fewer are pending, and the first arrival (or nothing after `timeout_ms`) when idle.
natsStatus FetchInto(natsSubscription* sub, int batch, int64_t timeout_ms,
                     std::vector<natsMsg*>& out, jsErrCode* jerr, PullLog& log) {
  // Counted whether or not nats.c needs to send a request (it does not when enough
  // messages are queued already).
  ++log.sent;
  log.longest_expiry = std::max(log.longest_expiry, std::chrono::milliseconds(timeout_ms));
  jsFetchRequest req;
  jsFetchRequest_Init(&req);
  req.Batch = batch;
  req.NoWait = true;
  req.Expires = timeout_ms * 1'000'000;
  natsMsgList list{};
  natsStatus s = natsSubscription_FetchRequest(&list, sub, &req);
  if (jerr != nullptr && s != NATS_OK) *jerr = static_cast<jsErrCode>(0);
  for (int i = 0; i < list.Count; ++i) {
    out.push_back(list.Msgs[i]);
    list.Msgs[i] = nullptr;  // ownership moves to the caller
  }
  natsMsgList_Destroy(&list);
  return s;
}

void TakeQueued(natsSubscription* sub, int max, std::vector<natsMsg*>& out, PullLog& log) {
  // libnats 3.4.1 overruns its result array when a fetch starts with more than half of its
  // batch already queued (messages the server sent after an earlier fetch stopped waiting),
  // so queued messages are taken one per fetch; a batch of one cannot overrun. Each call
  // returns at once while something is queued; with only status messages left, it asks the
  // server for one message and waits at most 1 ms.
  int queued = 0;
  int bytes = 0;
  while (static_cast<int>(out.size()) < max &&
         natsSubscription_GetPending(sub, &queued, &bytes) == NATS_OK && queued > 0) {
    if (FetchInto(sub, 1, 1, out, nullptr, log) != NATS_OK) break;
  }
}

pipeline::InboundMessage Convert(natsMsg* m, const std::string& stream) {
  pipeline::InboundMessage in;
  in.subject = natsMsg_GetSubject(m);
  const char* data = natsMsg_GetData(m);
  in.data.assign(data != nullptr ? data : "", static_cast<size_t>(natsMsg_GetDataLength(m)));
  const char** keys = nullptr;
  int count = 0;
  if (natsMsgHeader_Keys(m, &keys, &count) == NATS_OK) {
    for (int k = 0; k < count; ++k) {
      const char* v = nullptr;
      if (natsMsgHeader_Get(m, keys[k], &v) == NATS_OK && v != nullptr) in.headers[keys[k]] = v;
    }
    free(static_cast<void*>(keys));
  }
  if (auto it = in.headers.find("Nats-Msg-Id"); it != in.headers.end()) in.msg_id = it->second;
  jsMsgMetaData* meta = nullptr;
  if (natsMsg_GetMetaData(&meta, m) == NATS_OK && meta != nullptr) {
    in.stream = meta->Stream != nullptr ? meta->Stream : stream;
    in.stream_seq = meta->Sequence.Stream;
    in.delivered = meta->NumDelivered;
    in.publish_time_ns = meta->Timestamp;
    jsMsgMetaData_Destroy(meta);
  } else {
    in.stream = stream;
  }
  return in;
}

}  // namespace

std::vector<natsMsg*> JetStreamSource::CollectLateDeliveries() {
  // A flush round-trip proves that the server has registered every request sent before it,
  // so each has expired by the time the flush returned plus its expiry; a second flush after
  // that receives everything the server delivered to them. Taking queued messages may send
  // small requests of its own (1 ms), hence another round for those.
  std::vector<natsMsg*> late;
  for (int round = 0; round < 4 && pulls_.sent != pulls_.waited_out; ++round) {
    const uint64_t sent = pulls_.sent;
    const auto expiry = pulls_.longest_expiry;
    pulls_.longest_expiry = std::chrono::milliseconds(0);
    if (natsConnection_FlushTimeout(conn_->raw(), 1000) != NATS_OK) break;
    std::this_thread::sleep_for(expiry + kLatePullMargin);
    if (natsConnection_FlushTimeout(conn_->raw(), 1000) != NATS_OK) break;
    pulls_.waited_out = sent;
    TakeQueued(sub_, std::numeric_limits<int>::max(), late, pulls_);
  }
  return late;
}

pipeline::FetchedBatch JetStreamSource::FetchLate() {
  std::vector<natsMsg*> late = CollectLateDeliveries();
  pipeline::FetchedBatch batch;
  if (late.empty()) return batch;
  batch.messages.reserve(late.size());
  for (natsMsg* m : late) batch.messages.push_back(Convert(m, spec_.stream));
  std::lock_guard lock(mu_);
  batch.token = next_token_++;
  pending_[batch.token] = std::move(late);
  return batch;
}

JetStreamSource::~JetStreamSource() {
  if (sub_ != nullptr) {
    // Hand back at once what this process holds but will not process, so that another
    // replica gets it now rather than after AckWait: unsettled batches and messages the
    // server delivered after the last fetch had stopped waiting.
    std::vector<natsMsg*> left = CollectLateDeliveries();
    for (auto& [token, msgs] : pending_) left.insert(left.end(), msgs.begin(), msgs.end());
    pending_.clear();
    for (natsMsg* m : left) {
      natsMsg_Nak(m, nullptr);
      natsMsg_Destroy(m);
    }
    if (!left.empty()) {
      observability::LogInfo("returned unprocessed messages for redelivery",
                             {{"consumer", spec_.durable}, {"messages", left.size()}});
    }
    natsSubscription_Destroy(sub_);
  }
}

Result<pipeline::FetchedBatch, std::string> JetStreamSource::Fetch(int max,
                                                                   std::chrono::milliseconds wait) {
  std::vector<natsMsg*> owned;
  // The first part is sized by the mean message size of the previous batch: under a byte
  // budget, a stream of large events gets small parts from the second batch on.
  int first = std::min(max, kFetchPart);
  if (byte_budget_ != 0 && mean_bytes_ != 0) {
    first = std::min<int>(first, static_cast<int>(std::max<size_t>(1, byte_budget_ / mean_bytes_)));
  }
  TakeQueued(sub_, first, owned, pulls_);
  if (owned.empty()) {
    jsErrCode jerr{};
    const auto started = std::chrono::steady_clock::now();
    natsStatus s = FetchInto(sub_, first, std::max<int64_t>(1, wait.count()), owned, &jerr, pulls_);
    if (s != NATS_OK && s != NATS_TIMEOUT && owned.empty()) {
      return Err{"fetch from " + spec_.durable + " failed: " + StatusText(s, jerr)};
    }
    if (owned.empty() && std::chrono::steady_clock::now() - started < wait / 2) {
      // The server turned the request down at once (another replica's request is waiting
      // for the same messages): pause instead of spinning.
      std::this_thread::sleep_for(std::min(wait, std::chrono::milliseconds(10)));
    }
  }
  if (static_cast<int>(owned.size()) == first && first < max) FetchRest(max, wait, owned);
  if (!owned.empty()) {
    size_t bytes = 0;
    for (natsMsg* m : owned) bytes += static_cast<size_t>(natsMsg_GetDataLength(m));
    mean_bytes_ = std::max<size_t>(1, bytes / owned.size());
  }
  pipeline::FetchedBatch batch;
  batch.messages.reserve(owned.size());
  for (natsMsg* m : owned) batch.messages.push_back(Convert(m, spec_.stream));
  if (owned.empty()) return batch;
  std::lock_guard lock(mu_);
  batch.token = next_token_++;
  pending_[batch.token] = std::move(owned);
  return batch;
}

void JetStreamSource::FetchRest(int max, std::chrono::milliseconds wait,
                                std::vector<natsMsg*>& owned) {
  // The first part came back full, so more is pending: "no wait" pulls return at once with
  // what the server has. Each part is sized so that the batch stays near the byte budget at
  // the mean message size seen so far.
  size_t bytes = 0;
  for (natsMsg* m : owned) bytes += static_cast<size_t>(natsMsg_GetDataLength(m));
  int last = static_cast<int>(owned.size());
  int asked = last;
  while (last == asked && static_cast<int>(owned.size()) < max &&
         (byte_budget_ == 0 || bytes < byte_budget_)) {
    asked = std::min(kFetchPart, max - static_cast<int>(owned.size()));
    if (byte_budget_ != 0) {
      const size_t mean = std::max<size_t>(1, bytes / owned.size());
      asked = std::min<int>(
          asked, static_cast<int>(std::max<size_t>(1, (byte_budget_ - bytes + mean - 1) / mean)));
    }
    const size_t before = owned.size();
    TakeQueued(sub_, static_cast<int>(before) + asked, owned, pulls_);
    if (owned.size() == before &&
        FetchInto(sub_, asked, std::max<int64_t>(1, wait.count()), owned, nullptr, pulls_) !=
            NATS_OK &&
        owned.size() == before) {
      break;
    }
    for (size_t i = before; i < owned.size(); ++i) {
      bytes += static_cast<size_t>(natsMsg_GetDataLength(owned[i]));
    }
    last = static_cast<int>(owned.size() - before);
  }
}

void JetStreamSource::Settle(uint64_t token, std::span<const pipeline::Decision> decisions) {
  std::vector<natsMsg*> msgs;
  {
    std::lock_guard lock(mu_);
    auto it = pending_.find(token);
    if (it == pending_.end()) return;
    msgs = std::move(it->second);
    pending_.erase(it);
  }
  for (size_t i = 0; i < msgs.size() && i < decisions.size(); ++i) {
    natsStatus s = NATS_OK;
    if (decisions[i].kind == pipeline::Decision::Kind::kAck) {
      s = natsMsg_Ack(msgs[i], nullptr);
    } else {
      s = natsMsg_NakWithDelay(msgs[i], decisions[i].delay.count(), nullptr);
    }
    if (s != NATS_OK) {
      // The message will be redelivered after AckWait; every write is idempotent.
      observability::LogWarn("ack/nak failed", {{"error", StatusText(s)}});
    }
  }
  for (natsMsg* m : msgs) natsMsg_Destroy(m);
}

void JetStreamSource::InProgress(uint64_t token) {
  std::lock_guard lock(mu_);
  auto it = pending_.find(token);
  if (it == pending_.end()) return;
  for (natsMsg* m : it->second) natsMsg_InProgress(m, nullptr);
}

bool JetStreamSource::Connected() { return conn_->Connected(); }

bool JetStreamSource::Recover() {
  if (!conn_->Connected()) return false;  // the connection reconnects by itself
  auto ensured = ensure_ ? ensure_() : conn_->EnsureConsumer(spec_);
  if (!ensured.ok()) {
    observability::LogWarn("cannot recreate consumer",
                           {{"consumer", spec_.durable}, {"error", ensured.error()}});
    return false;
  }
  auto fresh = PullSubscribe(*conn_, spec_);
  if (!fresh.ok()) {
    observability::LogWarn("cannot bind to consumer",
                           {{"consumer", spec_.durable}, {"error", fresh.error()}});
    return false;
  }
  std::lock_guard lock(mu_);
  for (auto& [token, msgs] : pending_) {
    for (natsMsg* m : msgs) natsMsg_Destroy(m);
  }
  pending_.clear();
  natsSubscription_Destroy(sub_);
  sub_ = fresh.value();
  observability::LogInfo("bound to the consumer again (stream and consumer created if missing)",
                         {{"consumer", spec_.durable}, {"stream", spec_.stream}});
  return true;
}

bool JetStreamSource::Lag(uint64_t* pending, uint64_t* ack_pending) {
  jsConsumerInfo* ci = nullptr;
  jsErrCode jerr{};
  natsStatus s = js_GetConsumerInfo(&ci, conn_->js(), spec_.stream.c_str(), spec_.durable.c_str(),
                                    nullptr, &jerr);
  if (s != NATS_OK || ci == nullptr) return false;
  *pending = ci->NumPending;
  *ack_pending = static_cast<uint64_t>(ci->NumAckPending);
  jsConsumerInfo_Destroy(ci);
  return true;
}

Result<std::optional<pipeline::InboundMessage>, std::string> JetStreamMessageStore::Get(
    const std::string& stream, uint64_t seq) {
  natsMsg* msg = nullptr;
  jsErrCode jerr{};
  natsStatus s = js_GetMsg(&msg, conn_->js(), stream.c_str(), seq, nullptr, &jerr);
  if (s != NATS_OK) {
    if (jerr == JSNoMessageFoundErr || s == NATS_NOT_FOUND) {
      return std::optional<pipeline::InboundMessage>{};
    }
    return Err{"reading " + stream + " #" + std::to_string(seq) + ": " + StatusText(s, jerr)};
  }
  pipeline::InboundMessage in;
  in.subject = natsMsg_GetSubject(msg);
  const char* data = natsMsg_GetData(msg);
  in.data.assign(data != nullptr ? data : "", static_cast<size_t>(natsMsg_GetDataLength(msg)));
  const char* id = nullptr;
  if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK && id != nullptr) in.msg_id = id;
  in.stream = stream;
  in.stream_seq = seq;
  in.publish_time_ns = natsMsg_GetTime(msg);
  natsMsg_Destroy(msg);
  return std::optional<pipeline::InboundMessage>{std::move(in)};
}

std::vector<Result<Unit, std::string>> JetStreamDeadLetterSink::PublishAll(
    std::span<const DeadLetter> letters) {
  std::vector<NatsConnection::Outgoing> messages;
  messages.reserve(letters.size());
  for (const DeadLetter& letter : letters) {
    messages.push_back(
        {routing::DlqSubjectFor(letter.company_id, letter.Code() == ReasonCode::kInvalidTenant),
         letter.original, letter.DlqMsgId(), EncodeDeadLetterHeaders(letter)});
  }
  return conn_->PublishAll(messages);
}

Result<Unit, std::string> JetStreamDeadLetterSink::Publish(const DeadLetter& letter) {
  auto r = conn_->Publish(
      routing::DlqSubjectFor(letter.company_id, letter.Code() == ReasonCode::kInvalidTenant),
      letter.original, letter.DlqMsgId(), EncodeDeadLetterHeaders(letter));
  if (!r.ok()) return Err{r.error()};
  return Unit{};
}

}  // namespace evp::nats
