// evp_bench_reference: the minimal end-to-end designs the benchmark (bench/run.sh) measures the
// events processor against. Deliberately outside internal/: no validation, routing tables,
// versioning or bookkeeping, only what moving an event from JetStream into PostgreSQL needs.
//
// Modes:
//   --ensure-stream   create the realtime stream (same name/subjects as the processor's)
//   (default)         reference: pull fetch 4096 -> parse the key -> COPY into a temp staging
//                     table -> INSERT INTO bench_ref SELECT ... ON CONFLICT (key) DO UPDATE ->
//                     commit -> async natsMsg_Ack per message. Two writer threads with their own
//                     connection take alternate batches; the fetcher runs ahead of them.
//   --naive           the per-event design: per message one transaction (INSERT ... ON
//                     CONFLICT) and one natsMsg_AckSync.
//   --wait-drained    polls the consumer --durable of --stream every 50 ms until it exists
//                     with nothing pending or unacknowledged, and prints the wall-clock time
//                     it saw that (unix seconds with microseconds). Exit 0 drained, 3 after
//                     --timeout-s, 4 when --pid died without draining (after 5 s for acks
//                     in flight). One process with one connection: measuring costs next to
//                     no CPU, unlike a curl + jq poll. --trace FILE writes one line per poll:
//                     "unix-seconds backlog".
//
// Prints one line "reference: key=value ..." that bench/run.sh parses. Exit status: 0 done,
// 1 a server or database error, 2 bad arguments.
//
// Thread-safety: the fetcher owns the subscription; each writer owns its connection; nats.c
// connections are safe to ack on from several threads.
#include <nats/nats.h>
#include <signal.h>  // NOLINT(modernize-deprecated-headers): sigaction, kill (POSIX)

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
constexpr int64_t kNsPerMs = 1'000'000;

struct Options {
  std::string nats_url = "nats://127.0.0.1:4222";
  std::string postgres_dsn;
  std::string stream = "EVENTS_REALTIME";
  std::string durable = "bench-reference";
  std::string table = "bench_ref";
  int batch = 4096;
  int writers = 2;
  int64_t limit = 0;  // stop after this many messages; 0 = until idle
  int idle_exit_ms = 10'000;
  bool naive = false;
  bool ensure_stream = false;
  bool wait_drained = false;
  int64_t timeout_s = 600;
  int64_t pid = 0;    // --wait-drained: the process expected to drain the consumer
  std::string trace;  // --wait-drained: file of "unix-seconds backlog" lines, one per poll
};

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr,
               "evp_bench_reference: %s\n"
               "usage: evp_bench_reference [--ensure-stream | --naive] --nats URL --pg DSN\n"
               "       [--stream NAME] [--durable NAME] [--table NAME] [--batch N]\n"
               "       [--writers N] [--limit N] [--idle-exit-ms N]\n"
               "       evp_bench_reference --wait-drained --nats URL --stream NAME --durable NAME\n"
               "       [--timeout-s N] [--pid PID] [--trace FILE]\n",
               why.c_str());
  std::exit(2);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(a + " needs a value");
      return argv[++i];
    };
    auto number = [&]() -> int64_t {
      const std::string v = value();
      char* end = nullptr;
      const long long n = std::strtoll(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < 0) Usage(a + " needs a number >= 0");
      return n;
    };
    if (a == "--nats") {
      o.nats_url = value();
    } else if (a == "--pg") {
      o.postgres_dsn = value();
    } else if (a == "--stream") {
      o.stream = value();
    } else if (a == "--durable") {
      o.durable = value();
    } else if (a == "--table") {
      o.table = value();
    } else if (a == "--batch") {
      o.batch = static_cast<int>(std::clamp<int64_t>(number(), 1, 100'000));
    } else if (a == "--writers") {
      o.writers = static_cast<int>(std::clamp<int64_t>(number(), 1, 16));
    } else if (a == "--limit") {
      o.limit = number();
    } else if (a == "--idle-exit-ms") {
      o.idle_exit_ms = static_cast<int>(std::clamp<int64_t>(number(), 100, 3'600'000));
    } else if (a == "--naive") {
      o.naive = true;
    } else if (a == "--ensure-stream") {
      o.ensure_stream = true;
    } else if (a == "--wait-drained") {
      o.wait_drained = true;
    } else if (a == "--timeout-s") {
      o.timeout_s = number();
    } else if (a == "--pid") {
      o.pid = number();
    } else if (a == "--trace") {
      o.trace = value();
    } else {
      Usage("unknown argument " + a);
    }
  }
  if (!o.ensure_stream && !o.wait_drained && o.postgres_dsn.empty()) Usage("--pg is required");
  return o;
}

std::string NatsError(natsStatus s, jsErrCode jerr = static_cast<jsErrCode>(0)) {
  std::string out = natsStatus_GetText(s);
  const char* last = nats_GetLastError(nullptr);
  if (last != nullptr && *last != '\0') out += std::string(" (") + last + ")";
  if (jerr != 0) out += " [jetstream error " + std::to_string(static_cast<int>(jerr)) + "]";
  return out;
}

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "evp_bench_reference: %s\n", what.c_str());
  std::exit(1);
}

int64_t PeakRssKb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtoll(line.c_str() + 6, nullptr, 10);
  }
  return -1;
}

// One NATS connection with its JetStream context.
class Nats {
 public:
  explicit Nats(const std::string& url) {
    natsStatus s = natsConnection_ConnectTo(&conn_, url.c_str());
    if (s != NATS_OK) Fail("cannot connect to " + url + ": " + NatsError(s));
    s = natsConnection_JetStream(&js_, conn_, nullptr);
    if (s != NATS_OK) Fail("cannot open JetStream: " + NatsError(s));
  }
  ~Nats() {
    if (sub_ != nullptr) natsSubscription_Destroy(sub_);
    jsCtx_Destroy(js_);
    natsConnection_Destroy(conn_);
  }
  Nats(const Nats&) = delete;
  Nats& operator=(const Nats&) = delete;

  // Same stream as the processor's EnsureStreams, so that the processor only "updates" it.
  void EnsureStream(const std::string& name) {
    const char* subjects[] = {"v1.chats.>", "v1.messages.>", "v1.contacts.>", "v1.connection.>"};
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = name.c_str();
    sc.Subjects = subjects;
    sc.SubjectsLen = 4;
    sc.Storage = js_FileStorage;
    sc.Retention = js_LimitsPolicy;
    sc.MaxAge = int64_t{720} * 3600 * 1000 * kNsPerMs;
    sc.Replicas = 1;
    sc.Duplicates = int64_t{120'000} * kNsPerMs;
    jsStreamInfo* si = nullptr;
    jsErrCode jerr{};
    natsStatus s = js_AddStream(&si, js_, &sc, nullptr, &jerr);
    if (s != NATS_OK && jerr == JSStreamNameExistErr) s = NATS_OK;
    if (si != nullptr) jsStreamInfo_Destroy(si);
    if (s != NATS_OK) Fail("cannot create stream " + name + ": " + NatsError(s, jerr));
  }

  // num_pending + num_ack_pending of a consumer; nullopt while it does not exist (or the
  // server does not answer).
  std::optional<uint64_t> Backlog(const std::string& stream, const std::string& consumer) {
    jsConsumerInfo* ci = nullptr;
    jsErrCode jerr{};
    natsStatus s = js_GetConsumerInfo(&ci, js_, stream.c_str(), consumer.c_str(), nullptr, &jerr);
    if (s != NATS_OK || ci == nullptr) return std::nullopt;
    const uint64_t backlog = ci->NumPending + static_cast<uint64_t>(ci->NumAckPending);
    jsConsumerInfo_Destroy(ci);
    return backlog;
  }

  void Bind(const Options& o) {
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = o.durable.c_str();
    cc.AckPolicy = js_AckExplicit;
    cc.DeliverPolicy = js_DeliverAll;
    cc.AckWait = int64_t{60'000} * kNsPerMs;
    // The fetcher may run (writers + 2) batches ahead of the last commit.
    cc.MaxAckPending = static_cast<int64_t>(o.batch) * (o.writers + 3);
    cc.MaxWaiting = 512;
    jsConsumerInfo* ci = nullptr;
    jsErrCode jerr{};
    natsStatus s = js_AddConsumer(&ci, js_, o.stream.c_str(), &cc, nullptr, &jerr);
    if (ci != nullptr) jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) Fail("cannot create consumer " + o.durable + ": " + NatsError(s, jerr));
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = o.stream.c_str();
    so.Consumer = o.durable.c_str();
    so.ManualAck = true;
    s = js_PullSubscribe(&sub_, js_, "", o.durable.c_str(), nullptr, &so, &jerr);
    if (s != NATS_OK) Fail("cannot bind to " + o.durable + ": " + NatsError(s, jerr));
  }

  // Up to max messages, or none after wait_ms. The caller owns (and destroys) them.
  std::vector<natsMsg*> Fetch(int max, int64_t wait_ms) {
    natsMsgList list{};
    jsErrCode jerr{};
    natsStatus s = natsSubscription_Fetch(&list, sub_, max, wait_ms, &jerr);
    std::vector<natsMsg*> out;
    if (s == NATS_TIMEOUT) return out;
    if (s != NATS_OK) Fail("fetch failed: " + NatsError(s, jerr));
    out.reserve(static_cast<size_t>(list.Count));
    for (int i = 0; i < list.Count; ++i) {
      out.push_back(list.Msgs[i]);
      list.Msgs[i] = nullptr;
    }
    natsMsgList_Destroy(&list);
    return out;
  }

  void Flush() {
    natsStatus s = natsConnection_FlushTimeout(conn_, 30'000);
    if (s != NATS_OK) Fail("flush of acks failed: " + NatsError(s));
  }

 private:
  natsConnection* conn_ = nullptr;
  jsCtx* js_ = nullptr;
  natsSubscription* sub_ = nullptr;
};

// One row to upsert: the event's identity and its payload.
struct Row {
  std::string key;
  std::string company_id;
  std::string subject;
  int64_t stream_seq = 0;
  std::string payload;
};

std::string Str(const nlohmann::json& j, const char* name) {
  auto it = j.find(name);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// v1.<domain>.<action>.<tenant>: the key is tenant|domain|id of the row the event targets.
Row ToRow(natsMsg* m) {
  Row r;
  r.subject = natsMsg_GetSubject(m);
  const char* data = natsMsg_GetData(m);
  r.payload.assign(data != nullptr ? data : "", static_cast<size_t>(natsMsg_GetDataLength(m)));
  const size_t d0 = r.subject.find('.');
  const size_t d1 = r.subject.find('.', d0 + 1);
  const size_t last = r.subject.rfind('.');
  const std::string domain = r.subject.substr(d0 + 1, d1 - d0 - 1);
  r.company_id = r.subject.substr(last + 1);
  jsMsgMetaData* meta = nullptr;
  if (natsMsg_GetMetaData(&meta, m) == NATS_OK && meta != nullptr) {
    r.stream_seq = static_cast<int64_t>(meta->Sequence.Stream);
    jsMsgMetaData_Destroy(meta);
  }
  std::string id;
  const auto j = nlohmann::json::parse(r.payload, nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) {
    if (domain == "messages") {
      id = Str(j, "message_id");
    } else if (domain == "chats") {
      id = Str(j, "chat_id");
    } else if (domain == "contacts") {
      id = Str(j, "agent_id") + "|" + Str(j, "phone_number");
    } else {
      id = Str(j, "agent_id");
    }
  } else {
    r.payload = "{}";  // not JSON: the minimal design has no DLQ; keep the row, drop the body
  }
  if (id.empty()) id = "seq-" + std::to_string(r.stream_seq);
  r.key = r.company_id + "|" + domain + "|" + id;
  return r;
}

// Rows of a batch with one row per key: later events merge into earlier ones, as the upsert's
// `payload || EXCLUDED.payload` would have done had they arrived in separate batches.
std::vector<Row> Collapse(std::vector<Row> rows) {
  std::unordered_map<std::string, size_t> first;
  std::vector<Row> out;
  out.reserve(rows.size());
  for (Row& r : rows) {
    auto [it, inserted] = first.try_emplace(r.key, out.size());
    if (inserted) {
      out.push_back(std::move(r));
      continue;
    }
    Row& kept = out[it->second];
    auto merged = nlohmann::json::parse(kept.payload, nullptr, false);
    auto later = nlohmann::json::parse(r.payload, nullptr, false);
    if (merged.is_object() && later.is_object()) {
      merged.update(later);
      kept.payload = merged.dump();
    } else {
      kept.payload = std::move(r.payload);
    }
    kept.stream_seq = r.stream_seq;
    kept.subject = std::move(r.subject);
  }
  return out;
}

void CreateTable(pqxx::connection& c, const std::string& table) {
  pqxx::work tx(c);
  tx.exec0("CREATE TABLE IF NOT EXISTS " + tx.quote_name(table) +
           " (key text PRIMARY KEY, company_id text NOT NULL, subject text NOT NULL, "
           "stream_seq bigint NOT NULL, payload jsonb NOT NULL, "
           "updated_at timestamptz NOT NULL DEFAULT now()) "
           "WITH (autovacuum_enabled = false)");
  tx.commit();
}

// A writer: its own connection and temp staging table; takes batches from its own slot.
class Writer {
 public:
  explicit Writer(const Options& o) : conn_(o.postgres_dsn) {
    conn_.prepare("upsert",
                  "INSERT INTO " + conn_.quote_name(o.table) +
                      " AS cur (key, company_id, subject, stream_seq, payload) "
                      "SELECT key, company_id, subject, stream_seq, payload FROM bench_staging "
                      "ORDER BY key ON CONFLICT (key) DO UPDATE SET subject = EXCLUDED.subject, "
                      "stream_seq = EXCLUDED.stream_seq, payload = cur.payload || "
                      "EXCLUDED.payload, updated_at = now()");
    pqxx::nontransaction tx(conn_);
    tx.exec0(
        "CREATE TEMP TABLE bench_staging (key text, company_id text, subject text, "
        "stream_seq bigint, payload jsonb) ON COMMIT DELETE ROWS");
    thread_ = std::thread([this] { Run(); });
  }
  ~Writer() {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Blocks while the previous batch handed to this writer is still waiting.
  void Give(std::vector<natsMsg*> batch) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return !slot_.has_value(); });
    slot_ = std::move(batch);
    cv_.notify_all();
  }

  int64_t retries() const { return retries_.load(); }

 private:
  void Run() {
    while (true) {
      std::vector<natsMsg*> batch;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [this] { return slot_.has_value() || closing_; });
        if (!slot_) return;
        batch = std::move(*slot_);
        slot_.reset();
      }
      cv_.notify_all();
      Write(batch);
      for (natsMsg* m : batch) {
        natsStatus s = natsMsg_Ack(m, nullptr);
        if (s != NATS_OK) Fail("ack failed: " + NatsError(s));
        natsMsg_Destroy(m);
      }
    }
  }

  void Write(const std::vector<natsMsg*>& batch) {
    std::vector<Row> rows;
    rows.reserve(batch.size());
    for (natsMsg* m : batch) rows.push_back(ToRow(m));
    rows = Collapse(std::move(rows));
    for (int attempt = 1;; ++attempt) {
      try {
        pqxx::work tx(conn_);
        {
          pqxx::stream_to copy(
              tx, "bench_staging",
              std::vector<std::string>{"key", "company_id", "subject", "stream_seq", "payload"});
          for (const Row& r : rows) {
            copy << std::make_tuple(r.key, r.company_id, r.subject, r.stream_seq, r.payload);
          }
          copy.complete();
        }
        tx.exec_prepared0("upsert");
        tx.commit();
        return;
      } catch (const pqxx::transaction_rollback& e) {  // deadlock or serialization failure
        retries_.fetch_add(1);
        if (attempt >= 5) Fail(std::string("batch failed 5 times: ") + e.what());
      }
    }
  }

  pqxx::connection conn_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<std::vector<natsMsg*>> slot_;
  bool closing_ = false;
  std::atomic<int64_t> retries_{0};
  std::thread thread_;
};

void Report(const char* mode, int64_t events, double seconds, int64_t retries) {
  std::printf(
      "reference: mode=%s events=%lld seconds=%.3f events_per_s=%.0f peak_rss_kb=%lld "
      "retries=%lld\n",
      mode, static_cast<long long>(events), seconds,
      seconds > 0 ? static_cast<double>(events) / seconds : 0.0,
      static_cast<long long>(PeakRssKb()), static_cast<long long>(retries));
  std::fflush(stdout);
}

int RunReference(const Options& o) {
  Nats nats(o.nats_url);
  {
    pqxx::connection c(o.postgres_dsn);
    CreateTable(c, o.table);
  }
  nats.Bind(o);
  std::vector<std::unique_ptr<Writer>> writers;
  writers.reserve(static_cast<size_t>(o.writers));
  for (int i = 0; i < o.writers; ++i) writers.push_back(std::make_unique<Writer>(o));
  int64_t received = 0;
  size_t next_writer = 0;
  std::optional<Clock::time_point> first;
  auto last_message = Clock::now();
  while (o.limit == 0 || received < o.limit) {
    const int64_t want = o.limit == 0 ? o.batch : std::min<int64_t>(o.batch, o.limit - received);
    std::vector<natsMsg*> batch = nats.Fetch(static_cast<int>(want), 500);
    if (batch.empty()) {
      if (Clock::now() - last_message > std::chrono::milliseconds(o.idle_exit_ms)) {
        std::fprintf(stderr, "evp_bench_reference: idle for %d ms after %lld messages; stopping\n",
                     o.idle_exit_ms, static_cast<long long>(received));
        break;
      }
      continue;
    }
    if (!first) first = Clock::now();
    last_message = Clock::now();
    received += static_cast<int64_t>(batch.size());
    writers[next_writer]->Give(std::move(batch));
    next_writer = (next_writer + 1) % writers.size();
  }
  int64_t retries = 0;
  for (auto& w : writers) {
    retries += w->retries();
    w.reset();  // joins after its last batch is committed and acked
  }
  nats.Flush();
  const double secs = first ? std::chrono::duration<double>(Clock::now() - *first).count() : 0.0;
  Report("copy", received, secs, retries);
  return 0;
}

int RunNaive(const Options& o) {
  Nats nats(o.nats_url);
  pqxx::connection c(o.postgres_dsn);
  CreateTable(c, o.table);
  c.prepare("upsert", "INSERT INTO " + c.quote_name(o.table) +
                          " AS cur (key, company_id, subject, stream_seq, payload) VALUES ($1, $2, "
                          "$3, $4, $5::jsonb) ON CONFLICT (key) DO UPDATE SET subject = "
                          "EXCLUDED.subject, stream_seq = EXCLUDED.stream_seq, payload = "
                          "cur.payload || EXCLUDED.payload, updated_at = now()");
  nats.Bind(o);
  int64_t done = 0;
  std::optional<Clock::time_point> first;
  auto last_message = Clock::now();
  while (o.limit == 0 || done < o.limit) {
    const int64_t want = o.limit == 0 ? o.batch : std::min<int64_t>(o.batch, o.limit - done);
    std::vector<natsMsg*> batch = nats.Fetch(static_cast<int>(want), 500);
    if (batch.empty()) {
      if (Clock::now() - last_message > std::chrono::milliseconds(o.idle_exit_ms)) break;
      continue;
    }
    if (!first) first = Clock::now();
    last_message = Clock::now();
    for (natsMsg* m : batch) {
      const Row r = ToRow(m);
      pqxx::work tx(c);
      tx.exec_prepared0("upsert", r.key, r.company_id, r.subject, r.stream_seq, r.payload);
      tx.commit();
      jsErrCode jerr{};
      natsStatus s = natsMsg_AckSync(m, nullptr, &jerr);
      if (s != NATS_OK) Fail("AckSync failed: " + NatsError(s, jerr));
      natsMsg_Destroy(m);
      ++done;
    }
  }
  const double secs = first ? std::chrono::duration<double>(Clock::now() - *first).count() : 0.0;
  Report("naive", done, secs, 0);
  return 0;
}

}  // namespace

// Wall-clock time as "unix-seconds.microseconds".
std::string UnixNow() {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  char text[32];
  std::snprintf(text, sizeof text, "%lld.%06lld", static_cast<long long>(us / 1'000'000),
                static_cast<long long>(us % 1'000'000));
  return text;
}

int WaitDrained(const Options& o) {
  Nats nats(o.nats_url);
  std::FILE* trace = o.trace.empty() ? nullptr : std::fopen(o.trace.c_str(), "w");
  if (!o.trace.empty() && trace == nullptr) Usage("cannot write " + o.trace);
  const auto deadline = Clock::now() + std::chrono::seconds(o.timeout_s);
  std::optional<Clock::time_point> dead_since;
  std::string last = "no consumer";
  auto finish = [&](int rc, const std::string& out) {
    if (trace != nullptr) std::fclose(trace);
    std::printf("%s\n", out.c_str());
    return rc;
  };
  while (true) {
    auto backlog = nats.Backlog(o.stream, o.durable);
    const std::string now = UnixNow();
    if (trace != nullptr && backlog) {
      std::fprintf(trace, "%s %lld\n", now.c_str(), static_cast<long long>(*backlog));
    }
    if (backlog && *backlog == 0) return finish(0, now);
    if (backlog) last = std::to_string(*backlog);
    if (o.pid > 0 && kill(static_cast<pid_t>(o.pid), 0) != 0) {
      if (!dead_since) dead_since = Clock::now();
      if (Clock::now() - *dead_since > std::chrono::seconds(5)) {
        std::fprintf(stderr, "evp_bench_reference: pid %lld died with backlog %s\n",
                     static_cast<long long>(o.pid), last.c_str());
        return finish(4, last);
      }
    }
    if (Clock::now() > deadline) return finish(3, last);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

int main(int argc, char** argv) {
  const Options o = ParseArgs(argc, argv);
  try {
    if (o.ensure_stream) {
      Nats nats(o.nats_url);
      nats.EnsureStream(o.stream);
      return 0;
    }
    if (o.wait_drained) return WaitDrained(o);
    return o.naive ? RunNaive(o) : RunReference(o);
  } catch (const std::exception& e) {
    Fail(e.what());
  }
}
