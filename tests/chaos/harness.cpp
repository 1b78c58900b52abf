#include "chaos/harness.hpp"

#include <gtest/gtest.h>
#include <httplib.h>
#include <nats/nats.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <pqxx/pqxx>
#include <set>
#include <sstream>
#include <unordered_map>

namespace evp::chaos {

using testing::BinaryPath;
using testing::ChildProcess;
using testing::FreeTcpPort;
using testing::WaitFor;
using Clock = std::chrono::steady_clock;

namespace {

int64_t EnvInt(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  if (end == v || *end != '\0' || n < 0) {
    throw std::invalid_argument(std::string(name) + " must be a non-negative integer, got '" + v +
                                "'");
  }
  return n;
}

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

int64_t ReadVmHwmKb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6);
  }
  return 0;
}

void AddProblem(Tally& t, const std::string& what) {
  if (t.problems.size() < 40) t.problems.push_back(what);
}

std::string Abbrev(const std::string& s, size_t n = 120) {
  std::string out;
  for (char c : s.substr(0, n)) {
    auto u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7f) ? c : '?';
  }
  if (s.size() > n) out += "...";
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

const Settings& Settings::Get() {
  static const Settings settings = [] {
    Settings s;
    s.events = EnvInt("CHAOS_EVENTS", s.events);
    s.seed = static_cast<uint64_t>(EnvInt("CHAOS_SEED", static_cast<int64_t>(s.seed)));
    s.publishers = static_cast<int>(std::max<int64_t>(1, EnvInt("CHAOS_PUBLISHERS", s.publishers)));
    s.rate = static_cast<double>(EnvInt("CHAOS_RATE", static_cast<int64_t>(s.rate)));
    s.outage_seconds = static_cast<int>(EnvInt("CHAOS_PG_OUTAGE_SECONDS", s.outage_seconds));
    s.tenants = static_cast<int>(std::max<int64_t>(2, EnvInt("CHAOS_TENANTS", s.tenants)));
    if (const char* r = std::getenv("CHAOS_REPORT")) s.report_file = r;
    return s;
  }();
  return settings;
}

int64_t NowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t NowUnixMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::vector<std::string> TenantIds(int n, const std::string& prefix) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%04d", i);
    out.push_back(prefix + buf);
  }
  return out;
}

void Announce(const std::string& scenario) {
  const Settings& s = Settings::Get();
  std::cout << "[chaos] scenario " << scenario << ": CHAOS_EVENTS=" << s.events
            << " CHAOS_SEED=" << s.seed << " CHAOS_PUBLISHERS=" << s.publishers
            << " (rerun with the same values to replay the same events)" << std::endl;
}

// ---------------------------------------------------------------------------------------------

std::string HttpGet(int port, const std::string& path, int* status) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(1, 0);
  client.set_read_timeout(5, 0);
  auto res = client.Get(path.c_str());
  if (status != nullptr) *status = res ? res->status : -1;
  return res ? res->body : "";
}

double Metric(int port, const std::string& series) {
  const std::string text = HttpGet(port, "/metrics");
  size_t pos = 0;
  while ((pos = text.find(series + " ", pos)) != std::string::npos) {
    if (pos == 0 || text[pos - 1] == '\n') return std::atof(text.c_str() + pos + series.size() + 1);
    pos += series.size();
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------

double MetricSum(int port, const std::string& name, const std::string& label) {
  std::istringstream in(HttpGet(port, "/metrics"));
  std::string line;
  double sum = 0;
  while (std::getline(in, line)) {
    if (line.rfind(name + "{", 0) != 0) continue;
    const auto close = line.find("} ");
    if (close == std::string::npos || line.substr(0, close).find(label) == std::string::npos) {
      continue;
    }
    sum += std::atof(line.c_str() + close + 2);
  }
  return sum;
}

// Replaces the database of a URI DSN (postgresql://user@host:port/db?params).
std::string WithDatabase(const std::string& dsn, const std::string& database) {
  const auto scheme = dsn.find("://");
  if (scheme == std::string::npos) return dsn + " dbname=" + database;
  const auto path = dsn.find_first_of("/?", scheme + 3);
  if (path == std::string::npos) return dsn + "/" + database;
  if (dsn[path] == '?') return dsn.substr(0, path) + "/" + database + dsn.substr(path);
  const auto query = dsn.find('?', path);
  return dsn.substr(0, path + 1) + database +
         (query == std::string::npos ? std::string() : dsn.substr(query));
}

ChaosStack::ChaosStack(const StackOptions& options) {
  std::string dsn;
  if (options.private_postgres) {
    private_pg_ = testing::StartPrivatePostgres();
    dsn = private_pg_->Dsn();
  } else {
    auto& shared = testing::PostgresServer::Shared();
    own_database_ = testing::UniqueName("chaos");
    pqxx::connection admin(shared.AdminDsn());
    pqxx::nontransaction tx(admin);
    tx.exec0("CREATE DATABASE " + tx.quote_name(own_database_));
    dsn = WithDatabase(shared.Dsn(), own_database_);
  }
  env_ = {{"NATS_URL", nats_.Url()}, {"POSTGRES_DSN", dsn},        {"LOG_FORMAT", "json"},
          {"LOG_LEVEL", "info"},     {"BATCH_MAX_WAIT", "20ms"},   {"NAK_BASE_DELAY", "100ms"},
          {"NAK_MAX_DELAY", "1s"},   {"DLQ_BASE_DELAY", "100ms"},  {"DLQ_MAX_DELAY", "2s"},
          {"DLQ_ACK_WAIT", "5s"},    {"MAX_EVENT_BYTES", "65536"}, {"SHUTDOWN_GRACE", "10s"}};
  for (auto& [k, v] : options.env) env_[k] = v;
  monitor_ = std::make_unique<testing::TestPublisher>(nats_.Url());
  processors_.resize(static_cast<size_t>(options.processors));
  processor_stopped_.assign(static_cast<size_t>(options.processors), false);
  for (int i = 0; i < options.processors; ++i) processor_ports_.push_back(FreeTcpPort());
  for (int i = 0; i < options.processors; ++i) StartProcessor(i);
  if (options.worker) {
    worker_port_ = FreeTcpPort();
    StartWorker();
  }
  sampler_ = std::thread([this] { SampleLoop(); });
  // Nothing of a scenario means anything without a ready stack: stop the test at once.
  for (int i = 0; i < options.processors; ++i) {
    if (WaitProcessorReady(i) < 0) {
      throw std::runtime_error("events-processor " + std::to_string(i) + " not ready; log:\n" +
                               processors_[static_cast<size_t>(i)]->Log());
    }
  }
  if (options.worker && WaitWorkerReady() < 0) {
    throw std::runtime_error("dlq-worker not ready; log:\n" + worker_->Log());
  }
}

ChaosStack::~ChaosStack() {
  sampling_ = false;
  if (sampler_.joinable()) sampler_.join();
  if (::testing::Test::HasFailure()) {
    auto tail = [](const std::string& log) {
      size_t pos = log.size();
      for (int lines = 0; lines < 60 && pos > 0; ++lines) pos = log.rfind('\n', pos - 1);
      return log.substr(pos == std::string::npos ? 0 : pos);
    };
    std::cerr << "---- events-processor log (tail) ----\n"
              << tail(ProcessorLogs()) << "\n---- dlq-worker log (tail) ----\n"
              << tail(WorkerLogs()) << "\n";
  }
  // Stop the binaries before their database goes away.
  processors_.clear();
  worker_.reset();
  if (!own_database_.empty()) {
    try {
      pqxx::connection admin(testing::PostgresServer::Shared().AdminDsn());
      pqxx::nontransaction tx(admin);
      tx.exec0("DROP DATABASE IF EXISTS " + tx.quote_name(own_database_) + " WITH (FORCE)");
    } catch (const std::exception& e) {
      std::cerr << "[chaos] could not drop database " << own_database_ << ": " << e.what() << "\n";
    }
  }
}

Env ChaosStack::ProcessEnv(int port) const {
  Env env = env_;
  env["HTTP_PORT"] = std::to_string(port);
  return env;
}

void ChaosStack::StartProcessor(int i) {
  auto& slot = processors_.at(static_cast<size_t>(i));
  if (slot) retired_processors_.push_back(std::move(slot));
  slot = std::make_unique<ChildProcess>(BinaryPath("events-processor"), std::vector<std::string>{},
                                        ProcessEnv(ProcessorPort(i)));
  processor_stopped_.at(static_cast<size_t>(i)) = false;
  TrackPids();
}

void ChaosStack::KillProcessor(int i) {
  processor_stopped_.at(static_cast<size_t>(i)) = true;
  processors_.at(static_cast<size_t>(i))->Kill();
  TrackPids();
}

std::optional<int> ChaosStack::TerminateProcessor(int i, milliseconds timeout,
                                                  double* took_seconds) {
  auto& p = *processors_.at(static_cast<size_t>(i));
  processor_stopped_.at(static_cast<size_t>(i)) = true;
  const auto t0 = Clock::now();
  p.Signal(SIGTERM);
  auto rc = p.Wait(timeout);
  if (took_seconds != nullptr) *took_seconds = Seconds(t0);
  TrackPids();
  return rc;
}

bool ChaosStack::ProcessorRunning(int i) {
  return processors_.at(static_cast<size_t>(i))->Running();
}

bool ChaosStack::ProcessorReady(int i) const {
  int status = 0;
  HttpGet(ProcessorPort(i), "/readyz", &status);
  return status == 200;
}

double ChaosStack::WaitProcessorReady(int i, milliseconds deadline) const {
  const auto t0 = Clock::now();
  return WaitFor([&] { return ProcessorReady(i); }, deadline) ? Seconds(t0) : -1;
}

void ChaosStack::StartWorker() {
  if (worker_) retired_workers_.push_back(std::move(worker_));
  worker_ = std::make_unique<ChildProcess>(BinaryPath("dlq-worker"), std::vector<std::string>{},
                                           ProcessEnv(worker_port_));
  worker_stopped_ = false;
  TrackPids();
}

void ChaosStack::KillWorker() {
  worker_stopped_ = true;
  worker_->Kill();
  TrackPids();
}

std::vector<std::string> ChaosStack::UnexpectedExits() {
  auto last_line = [](const std::string& log) {
    size_t end = log.find_last_not_of('\n');
    if (end == std::string::npos) return std::string();
    size_t start = log.rfind('\n', end);
    return log.substr(start == std::string::npos ? 0 : start + 1,
                      end + 1 - (start == std::string::npos ? 0 : start + 1));
  };
  std::vector<std::string> out;
  for (size_t i = 0; i < processors_.size(); ++i) {
    auto& p = processors_[i];
    if (p && !processor_stopped_[i] && !p->Running()) {
      auto rc = p->Wait(milliseconds(0));
      out.push_back("events-processor " + std::to_string(i) + " exited with " +
                    (rc ? std::to_string(*rc) : "?") + ": " + last_line(p->Log()));
    }
  }
  if (worker_ && !worker_stopped_ && !worker_->Running()) {
    auto rc = worker_->Wait(milliseconds(0));
    out.push_back("dlq-worker exited with " + (rc ? std::to_string(*rc) : std::string("?")) + ": " +
                  last_line(worker_->Log()));
  }
  return out;
}

bool ChaosStack::WorkerReady() const {
  int status = 0;
  HttpGet(worker_port_, "/readyz", &status);
  return status == 200;
}

double ChaosStack::WaitWorkerReady(milliseconds deadline) const {
  const auto t0 = Clock::now();
  return WaitFor([&] { return WorkerReady(); }, deadline) ? Seconds(t0) : -1;
}

std::string ChaosStack::ProcessorLogs() const {
  std::string out;
  for (const auto& p : retired_processors_) out += p->Log();
  for (const auto& p : processors_) {
    if (p) out += p->Log();
  }
  return out;
}

std::string ChaosStack::WorkerLogs() const {
  std::string out;
  for (const auto& w : retired_workers_) out += w->Log();
  if (worker_) out += worker_->Log();
  return out;
}

void ChaosStack::TrackPids() {
  std::lock_guard lock(pids_mu_);
  processor_pids_.clear();
  for (auto& p : processors_) {
    if (p && p->Running()) processor_pids_.push_back(p->Pid());
  }
  worker_pid_ = (worker_ && worker_->Running()) ? worker_->Pid() : -1;
}

void ChaosStack::SampleLoop() {
  // VmHWM is the process's own high-water mark: sampling it often enough catches the peak of
  // every incarnation, including ones that are about to be killed.
  while (sampling_.load()) {
    std::vector<pid_t> pids;
    pid_t worker = -1;
    {
      std::lock_guard lock(pids_mu_);
      pids = processor_pids_;
      worker = worker_pid_;
    }
    for (pid_t pid : pids) {
      const int64_t kb = ReadVmHwmKb(pid);
      int64_t cur = peak_processor_kb_.load();
      while (kb > cur && !peak_processor_kb_.compare_exchange_weak(cur, kb)) {
      }
    }
    if (worker > 0) {
      const int64_t kb = ReadVmHwmKb(worker);
      int64_t cur = peak_worker_kb_.load();
      while (kb > cur && !peak_worker_kb_.compare_exchange_weak(cur, kb)) {
      }
    }
    std::this_thread::sleep_for(milliseconds(100));  // sampling period
  }
}

ConsumerState ChaosStack::Consumer(const std::string& stream, const std::string& consumer) const {
  ConsumerState out;
  std::lock_guard lock(monitor_mu_);
  jsConsumerInfo* ci = nullptr;
  jsErrCode err{};
  jsOptions opts;
  jsOptions_Init(&opts);
  opts.Wait = 2000;
  natsStatus s =
      js_GetConsumerInfo(&ci, monitor_->JetStream(), stream.c_str(), consumer.c_str(), &opts, &err);
  if (s != NATS_OK) {
    out.error = natsStatus_GetText(s);
    return out;
  }
  out.ok = true;
  out.delivered_consumer_seq = ci->Delivered.Consumer;
  out.delivered_stream_seq = ci->Delivered.Stream;
  out.ack_floor_stream_seq = ci->AckFloor.Stream;
  out.num_ack_pending = ci->NumAckPending;
  out.num_redelivered = ci->NumRedelivered;
  out.num_pending = ci->NumPending;
  jsConsumerInfo_Destroy(ci);
  return out;
}

ConsumerState ChaosStack::Realtime() const {
  return Consumer("EVENTS_REALTIME", "events-processor-realtime");
}

ConsumerState ChaosStack::Dlq() const { return Consumer("EVENTS_DLQ", "dlq-worker"); }

uint64_t ChaosStack::Progress() const {
  ConsumerState c = Realtime();
  return c.ok ? c.ack_floor_stream_seq : 0;
}

bool ChaosStack::WaitProgress(uint64_t target, milliseconds deadline) const {
  return WaitFor([&] { return Progress() >= target; }, deadline);
}

// ---------------------------------------------------------------------------------------------

LoadPublisher::LoadPublisher(std::string url, Ledger& ledger, size_t first, size_t count,
                             Options options)
    : url_(std::move(url)), ledger_(ledger), options_(std::move(options)) {
  const int n = std::max(1, options_.threads);
  std::vector<std::vector<size_t>> plans(static_cast<size_t>(n));
  for (size_t i = first; i < first + count; ++i) {
    const size_t h = std::hash<std::string>{}(ledger_.events[i].order_key);
    plans[h % static_cast<size_t>(n)].push_back(i);
  }
  started_ = Clock::now();
  for (int t = 0; t < n; ++t) {
    threads_.emplace_back(
        [this, t, plan = std::move(plans[static_cast<size_t>(t)])]() mutable { Run(t, plan); });
  }
}

LoadPublisher::~LoadPublisher() { Join(); }

double LoadPublisher::Join() {
  bool joined = false;
  for (auto& t : threads_) {
    if (t.joinable()) {
      t.join();
      joined = true;
    }
  }
  if (joined) seconds_ = Seconds(started_);
  return seconds_;
}

bool LoadPublisher::WaitAcked(int64_t n, milliseconds deadline) const {
  return WaitFor([&] { return acked_.load() >= n || Finished(); }, deadline) && acked_.load() >= n;
}

void LoadPublisher::Run(int thread, std::vector<size_t> plan) {
  std::unique_ptr<testing::TestPublisher> pub;
  const auto give_up = Clock::now() + options_.retry_deadline;
  while (!pub) {
    try {
      pub = std::make_unique<testing::TestPublisher>(url_);
    } catch (const std::exception& e) {
      if (Clock::now() >= give_up) {
        std::cerr << "[chaos] publisher " << thread << " cannot connect: " << e.what() << "\n";
        finished_.fetch_add(1);
        return;
      }
      std::this_thread::sleep_for(milliseconds(100));  // connect retry backoff
    }
  }
  const double per_thread_rate =
      options_.rate > 0 ? options_.rate / static_cast<double>(std::max(1, options_.threads)) : 0;
  const auto start = Clock::now();
  for (size_t k = 0; k < plan.size(); ++k) {
    if (per_thread_rate > 0) {
      const auto due =
          start + std::chrono::duration_cast<Clock::duration>(
                      std::chrono::duration<double>(static_cast<double>(k) / per_thread_rate));
      std::this_thread::sleep_until(due);  // pacing of the offered load
    }
    const size_t i = plan[k];
    const Event& e = ledger_.events[i];
    PubRecord& rec = ledger_.records[i];
    const auto deadline = Clock::now() + options_.retry_deadline;
    while (true) {
      ++rec.attempts;
      const int64_t sent = NowUnixMicros();
      testing::PubResult r = pub->Publish(e.subject, e.body, e.msg_id);
      if (r.ok) {
        rec.acked = true;
        // A duplicate PubAck after a retry only says an earlier attempt of ours was stored.
        rec.duplicate = r.duplicate && rec.attempts == 1;
        rec.seq = r.sequence;
        rec.sent_unix_us = sent;
        break;
      }
      rec.last_error = r.error;
      retries_.fetch_add(1);
      if (Clock::now() >= deadline) break;
      std::this_thread::sleep_for(milliseconds(20));  // retry backoff while NATS is away
    }
    if (rec.acked) {
      acked_.fetch_add(1);
      if (options_.on_acked) options_.on_acked(i);
    }
  }
  finished_.fetch_add(1);
}

// ---------------------------------------------------------------------------------------------

std::string Tally::ExhaustedSummary() const {
  std::string out;
  for (const auto& [reason, n] : exhausted_by_reason) {
    if (!out.empty()) out += ", ";
    out += reason + " " + std::to_string(n);
  }
  return out.empty() ? "-" : out;
}

namespace {

struct MsgRow {
  std::string text, status, chat;
  int64_t created_us = 0;
};
struct ChatRow {
  int64_t ts = 0;
  std::string push_name;
};
struct ContactRow {
  std::string push_name, origin;
};
struct ExRow {
  std::string reason_code, company, subject, error_class, payload;
  int64_t attempts = 0;
  std::string key;  // idempotency_key
};

struct TenantRows {
  bool loaded = false;
  std::unordered_map<std::string, MsgRow> messages;
  std::unordered_map<std::string, ChatRow> chats;
  std::map<std::string, ContactRow> contacts;                  // agent|phone
  std::map<std::string, std::vector<std::string>> onboarding;  // agent|phone -> message ids
};

std::string Str(const pqxx::field& f) { return f.is_null() ? std::string("<null>") : f.c_str(); }

TenantRows LoadTenant(pqxx::work& tx, const std::string& schema) {
  TenantRows rows;
  const std::string s = tx.quote_name(schema);
  pqxx::result exists = tx.exec_params("SELECT to_regclass($1) IS NOT NULL", schema + ".messages");
  if (!exists[0][0].as<bool>()) return rows;
  rows.loaded = true;
  for (const auto& r : tx.exec("SELECT message_id, message_text, status, chat_id, "
                               "(extract(epoch FROM created_at) * 1000000)::bigint FROM " +
                               s + ".messages")) {
    rows.messages[r[0].c_str()] = {Str(r[1]), Str(r[2]), Str(r[3]), r[4].as<int64_t>()};
  }
  for (const auto& r :
       tx.exec("SELECT chat_id, coalesce(conversation_timestamp, -1), push_name FROM " + s +
               ".chats")) {
    rows.chats[r[0].c_str()] = {r[1].as<int64_t>(), Str(r[2])};
  }
  for (const auto& r : tx.exec("SELECT agent_id || '|' || phone_number, push_name, origin FROM " +
                               s + ".contacts")) {
    rows.contacts[r[0].c_str()] = {Str(r[1]), Str(r[2])};
  }
  for (const auto& r : tx.exec("SELECT agent_id || '|' || phone_number, message_id FROM " + s +
                               ".onboarding_log")) {
    rows.onboarding[r[0].c_str()].push_back(Str(r[1]));
  }
  return rows;
}

}  // namespace

Tally Verify(const std::string& dsn, const Ledger& ledger, const VerifyOptions& options) {
  Tally tally;
  const size_t T = ledger.tenants.size();

  // 1. The expected state, from what was published (PubAck'ed) only.
  struct MsgExp {
    std::string text, chat, status = "sent";
    bool optional = false;
  };
  struct ChatExp {  // the newest version wins: (conversation_timestamp, stream sequence)
    int64_t ts = -1;
    uint64_t seq = 0;
    std::string text;
  };
  std::vector<std::unordered_map<std::string, MsgExp>> msgs(T);
  std::vector<std::map<std::string, ChatExp>> chats(T);
  std::vector<std::map<std::string, std::string>> contacts(T);  // key -> push_name
  // Onboarding follows stream order: per (agent, phone), its inbound messages and contact
  // upserts by stream sequence. The first one decides: a message names the log row, an
  // upsert means no row. Unknown when that event may also have been exhausted.
  struct Contender {
    uint64_t seq;
    std::string message_id;  // empty for a contacts.upsert
    bool optional;
  };
  std::vector<std::map<std::string, std::vector<Contender>>> contenders(T);
  std::set<int> tenants_expected;
  std::unordered_map<std::string, size_t> by_msg_id;
  for (size_t i = 0; i < ledger.events.size(); ++i) {
    const Event& e = ledger.events[i];
    const PubRecord& r = ledger.records[i];
    if (!r.acked) continue;
    by_msg_id.emplace(e.msg_id, i);
    if (r.duplicate || IsBad(e.kind) || e.tenant < 0) continue;
    const auto t = static_cast<size_t>(e.tenant);
    tenants_expected.insert(e.tenant);
    switch (e.kind) {
      case Kind::kMessageUpsert: {
        MsgExp& m = msgs[t][e.key];
        m.text = e.text;
        m.chat = e.chat_id;
        m.optional = e.expect == Expect::kApplyOrExhaust;
        if (e.onboards) {
          contenders[t][e.onboards->first + "|" + e.onboards->second].push_back(
              {r.seq, e.key, m.optional});
        }
        break;
      }
      case Kind::kMessageUpdate:
        msgs[t][e.key].status = e.text;
        break;
      case Kind::kChatUpsert: {
        ChatExp& c = chats[t][e.key];
        if (e.version > c.ts || (e.version == c.ts && r.seq > c.seq))
          c = {e.version, r.seq, e.text};
        break;
      }
      case Kind::kContactUpsert:
        contacts[t][e.key] = e.text;
        contenders[t][e.key].push_back({r.seq, "", e.expect == Expect::kApplyOrExhaust});
        break;
      default:
        break;
    }
  }
  struct Onboarded {
    std::string message_id;  // empty when unknown (the deciding event may be exhausted)
  };
  std::vector<std::map<std::string, Onboarded>> onboard(T);  // agent|phone -> expected row
  std::vector<std::set<std::string>> not_onboarded(T);       // a contacts.upsert came first
  for (size_t t = 0; t < T; ++t) {
    for (auto& [key, list] : contenders[t]) {
      std::sort(list.begin(), list.end(),
                [](const Contender& a, const Contender& b) { return a.seq < b.seq; });
      const Contender& first = list.front();
      if (first.optional) {
        onboard[t][key] = {};           // checked loosely below
        contacts[t].emplace(key, "?");  // may exist
      } else if (first.message_id.empty()) {
        not_onboarded[t].insert(key);
      } else {
        onboard[t][key] = {first.message_id};
        contacts[t].emplace(key, "");  // "" = created by onboarding
      }
    }
  }

  // 2. What PostgreSQL holds.
  pqxx::connection conn(dsn);
  pqxx::work tx(conn);
  std::map<std::string, std::string> registry;  // company_id -> schema_name
  for (const auto& r : tx.exec("SELECT company_id, schema_name FROM events_ops.tenants")) {
    registry[r[0].c_str()] = r[1].c_str();
  }
  std::set<std::string> schemas;
  for (const auto& r :
       tx.exec("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'")) {
    schemas.insert(r[0].c_str());
  }
  std::vector<TenantRows> rows(T);
  for (size_t t = 0; t < T; ++t) {
    if (tenants_expected.count(static_cast<int>(t)) || registry.count(ledger.tenants[t])) {
      rows[t] = LoadTenant(tx, SchemaOf(ledger.tenants[t]));
    }
  }
  std::unordered_map<std::string, std::vector<ExRow>> exhausted;
  for (const auto& r :
       tx.exec("SELECT coalesce(dlq_metadata->>'orig_msg_id', ''), reason_code, company_id, "
               "source_subject, error_class, attempts, original_payload, idempotency_key FROM "
               "events_ops.exhausted_events")) {
    ExRow x{r[1].c_str(),
            r[2].c_str(),
            r[3].c_str(),
            r[4].c_str(),
            pqxx::binarystring(r[6]).str(),
            r[5].as<int64_t>(),
            r[7].c_str()};
    tally.exhausted_attempts[x.attempts]++;
    if (!by_msg_id.count(r[0].c_str())) {
      ++tally.stray_exhausted;
      AddProblem(tally, "exhausted row matching no published event: msg id '" +
                            Abbrev(r[0].c_str()) + "' subject " + Abbrev(x.subject) + " reason " +
                            x.reason_code);
      continue;
    }
    exhausted[r[0].c_str()].push_back(std::move(x));
  }
  tx.commit();

  // 3. Registry and schemas: exactly the tenants that had a valid event.
  for (int t : tenants_expected) {
    const std::string& id = ledger.tenants[static_cast<size_t>(t)];
    auto it = registry.find(id);
    if (it == registry.end() || it->second != SchemaOf(id) || !schemas.count(SchemaOf(id)) ||
        !rows[static_cast<size_t>(t)].loaded) {
      ++tally.schema_mismatch;
      AddProblem(tally, "tenant " + id + " has no registry row / schema " + SchemaOf(id));
    }
  }
  std::set<std::string> expected_schemas;
  for (int t : tenants_expected)
    expected_schemas.insert(SchemaOf(ledger.tenants[static_cast<size_t>(t)]));
  for (const auto& s : schemas) {
    if (!expected_schemas.count(s)) {
      ++tally.schema_mismatch;
      AddProblem(tally, "unexpected schema " + s);
    }
  }
  for (const auto& [id, schema] : registry) {
    if (!expected_schemas.count(schema)) {
      ++tally.schema_mismatch;
      AddProblem(tally, "unexpected registry row " + Abbrev(id) + " -> " + schema);
    }
  }

  // 4. Every published event: applied, superseded, exhausted, or lost.
  for (size_t i = 0; i < ledger.events.size(); ++i) {
    const Event& e = ledger.events[i];
    const PubRecord& rec = ledger.records[i];
    if (!rec.acked || rec.duplicate) continue;
    ++tally.published;
    auto ex_it = exhausted.find(e.msg_id);
    const std::vector<ExRow>* ex = ex_it == exhausted.end() ? nullptr : &ex_it->second;
    const std::string where = std::string(KindName(e.kind)) + " " + e.msg_id + " on " +
                              Abbrev(e.subject) + " (seq " + std::to_string(rec.seq) + ")";
    if (ex != nullptr && ex->size() > 1) {
      tally.duplicates += static_cast<int64_t>(ex->size()) - 1;
      std::string keys;
      for (const auto& x : *ex) keys += " [" + x.key + " " + x.reason_code + "]";
      AddProblem(tally, where + ": " + std::to_string(ex->size()) + " exhausted rows:" + keys);
    }
    if (e.expect == Expect::kExhaust) {
      if (ex == nullptr) {
        ++tally.lost;
        AddProblem(tally, "LOST " + where + ": no exhausted row");
        continue;
      }
      ++tally.exhausted;
      const ExRow& x = ex->front();
      tally.exhausted_by_reason[x.reason_code]++;
      if (!e.expect_reason.empty() && x.reason_code != e.expect_reason) {
        ++tally.wrong_reason;
        AddProblem(tally, where + ": reason " + x.reason_code + ", expected " + e.expect_reason);
      }
      if (x.payload != e.body) {
        ++tally.wrong_payload;
        AddProblem(tally, where + ": original_payload differs (" +
                              std::to_string(x.payload.size()) + " bytes stored, " +
                              std::to_string(e.body.size()) + " published)");
      }
      if (x.subject != e.subject || (!e.expect_company.empty() && x.company != e.expect_company)) {
        ++tally.wrong_source;
        AddProblem(tally, where + ": stored subject/company " + Abbrev(x.subject) + " / " +
                              Abbrev(x.company));
      }
      continue;
    }

    // A valid event: is its effect in the tables?
    enum class Effect { kExact, kSuperseded, kMissing };
    Effect effect = Effect::kMissing;
    const TenantRows& tr = rows[static_cast<size_t>(e.tenant)];
    switch (e.kind) {
      case Kind::kMessageUpsert: {
        auto it = tr.messages.find(e.key);
        if (it != tr.messages.end()) {
          effect = Effect::kExact;
          if (it->second.text != e.text || it->second.chat != e.chat_id) {
            ++tally.state_mismatch;
            AddProblem(tally, where + ": stored message_text '" + Abbrev(it->second.text) +
                                  "', published '" + Abbrev(e.text) + "'");
          }
          if (options.collect_latency && it->second.created_us > 0 && rec.sent_unix_us > 0) {
            const int64_t lat = it->second.created_us - rec.sent_unix_us;
            tally.upsert_latency_us.emplace_back(i, lat);
          }
        }
        break;
      }
      case Kind::kMessageUpdate: {
        auto it = tr.messages.find(e.key);
        if (it != tr.messages.end() && it->second.status == e.text) effect = Effect::kExact;
        break;
      }
      case Kind::kChatUpsert: {
        auto it = tr.chats.find(e.key);
        const ChatExp& winner = chats[static_cast<size_t>(e.tenant)][e.key];
        if (it != tr.chats.end()) {
          const bool same_version = it->second.ts == e.version;
          // Superseded: a newer event, or a later stream sequence of the same version, won.
          if (it->second.ts > e.version ||
              (same_version && winner.ts == e.version && winner.seq != rec.seq)) {
            effect = Effect::kSuperseded;
          } else if (same_version) {
            effect = Effect::kExact;
            if (it->second.push_name != e.text) {
              ++tally.state_mismatch;
              AddProblem(tally, where + ": push_name '" + Abbrev(it->second.push_name) +
                                    "', published '" + Abbrev(e.text) + "'");
            }
          }
        }
        break;
      }
      case Kind::kContactUpsert: {
        auto it = tr.contacts.find(e.key);
        if (it != tr.contacts.end()) {
          effect = Effect::kExact;
          if (it->second.push_name != e.text) {
            ++tally.state_mismatch;
            AddProblem(tally, where + ": contact push_name '" + Abbrev(it->second.push_name) +
                                  "', published '" + Abbrev(e.text) + "'");
          }
        }
        break;
      }
      default:
        break;
    }
    if (effect == Effect::kMissing) {
      if (ex != nullptr) {
        ++tally.exhausted;
        tally.exhausted_by_reason[ex->front().reason_code]++;
        if (e.expect == Expect::kApply) {
          ++tally.unexpected_exhausted;
          AddProblem(tally, where + ": valid event exhausted with " + ex->front().reason_code);
        }
      } else {
        ++tally.lost;
        AddProblem(tally, "LOST " + where + ": effect not in " +
                              SchemaOf(ledger.tenants[static_cast<size_t>(e.tenant)]));
      }
      continue;
    }
    effect == Effect::kExact ? ++tally.applied : ++tally.superseded;
    if (ex != nullptr) {
      ++tally.duplicates;
      ++tally.unexpected_exhausted;
      AddProblem(tally, where + ": applied AND exhausted (" + ex->front().reason_code + ")");
    }
  }

  // 5. The final tables hold exactly the expected rows.
  for (size_t t = 0; t < T; ++t) {
    const TenantRows& tr = rows[t];
    const std::string schema = SchemaOf(ledger.tenants[t]);
    for (const auto& [id, row] : tr.messages) {
      auto it = msgs[t].find(id);
      if (it == msgs[t].end()) {
        ++tally.unexpected_rows;
        AddProblem(tally, "unexpected row " + schema + ".messages " + Abbrev(id));
      } else if (row.status != it->second.status) {
        ++tally.state_mismatch;
        AddProblem(tally, schema + ".messages " + id + ": status " + row.status + ", expected " +
                              it->second.status);
      }
    }
    for (const auto& [id, row] : tr.chats) {
      auto it = chats[t].find(id);
      if (it == chats[t].end()) {
        ++tally.unexpected_rows;
        AddProblem(tally, "unexpected row " + schema + ".chats " + Abbrev(id));
      } else if (row.ts != it->second.ts || row.push_name != it->second.text) {
        ++tally.state_mismatch;
        AddProblem(tally, schema + ".chats " + id + ": conversation_timestamp " +
                              std::to_string(row.ts) + " push_name '" + Abbrev(row.push_name) +
                              "', newest published " + std::to_string(it->second.ts) + " '" +
                              Abbrev(it->second.text) + "'");
      }
    }
    for (const auto& [key, row] : tr.contacts) {
      auto it = contacts[t].find(key);
      if (it == contacts[t].end()) {
        ++tally.unexpected_rows;
        AddProblem(tally, "unexpected row " + schema + ".contacts " + Abbrev(key));
      } else if (it->second.empty() && row.origin != "DirectChat") {
        ++tally.state_mismatch;
        AddProblem(tally, schema + ".contacts " + key + ": onboarded with origin " + row.origin);
      } else if (not_onboarded[t].count(key) && row.origin != "<null>") {
        // The workload's upserts carry no origin: one here came from a later message.
        ++tally.state_mismatch;
        AddProblem(tally, schema + ".contacts " + key + ": origin " + row.origin +
                              ", but a contacts.upsert came before its messages");
      }
    }
    for (const auto& [key, want] : onboard[t]) {
      auto it = tr.onboarding.find(key);
      if (want.message_id.empty()) {
        if (it != tr.onboarding.end() && it->second.size() > 1) {
          tally.duplicates += static_cast<int64_t>(it->second.size()) - 1;
          AddProblem(tally, schema + ": " + std::to_string(it->second.size()) +
                                " onboarding_log rows for " + key);
        }
        continue;
      }
      if (!tr.contacts.count(key)) {
        ++tally.state_mismatch;
        AddProblem(tally, schema + ": onboarded contact " + key + " missing");
      }
      if (it == tr.onboarding.end()) {
        ++tally.state_mismatch;
        AddProblem(tally, schema + ": onboarding_log row for " + key + " missing");
      } else if (it->second.size() > 1) {
        tally.duplicates += static_cast<int64_t>(it->second.size()) - 1;
        AddProblem(tally, schema + ": " + std::to_string(it->second.size()) +
                              " onboarding_log rows for " + key);
      } else if (it->second.front() != want.message_id) {
        ++tally.state_mismatch;
        AddProblem(tally, schema + ": onboarding_log row for " + key + " names message " +
                              Abbrev(it->second.front()) + ", the first in the stream is " +
                              Abbrev(want.message_id));
      }
    }
    for (const auto& [key, ids] : tr.onboarding) {
      if (!onboard[t].count(key)) {
        ++tally.unexpected_rows;
        AddProblem(tally,
                   "unexpected onboarding_log row " + schema + " " + key +
                       (not_onboarded[t].count(key) ? " (a contacts.upsert came first)" : ""));
      }
    }
  }
  return tally;
}

Tally Settle(const ChaosStack& stack, const Ledger& ledger, milliseconds deadline,
             double* took_seconds, const VerifyOptions& options) {
  const auto t0 = Clock::now();
  const auto end = t0 + deadline;
  Tally last;
  bool verified = false;
  int idle_rounds = 0;
  while (Clock::now() < end) {
    const ConsumerState rt = stack.Realtime();
    const ConsumerState dq =
        rt.ok && rt.num_pending == 0 && rt.num_ack_pending == 0 ? stack.Dlq() : ConsumerState{};
    if (dq.ok && dq.num_pending == 0 && dq.num_ack_pending == 0) {
      try {
        last = Verify(stack.Dsn(), ledger, options);
        verified = true;
        // Nothing pending or unacknowledged anywhere, several times in a row: no delivery is
        // left that could still change the outcome, so a loss is final.
        if (last.lost == 0 || ++idle_rounds >= 4) break;
      } catch (const std::exception& e) {
        std::cerr << "[chaos] verify failed (will retry): " << e.what() << "\n";
      }
    } else {
      idle_rounds = 0;
    }
    std::this_thread::sleep_for(milliseconds(250));  // poll period
  }
  if (took_seconds != nullptr) *took_seconds = Seconds(t0);
  if (!verified || last.lost != 0) last = Verify(stack.Dsn(), ledger, options);
  return last;
}

VisibilityProbe::VisibilityProbe(std::string dsn, const Ledger& ledger)
    : dsn_(std::move(dsn)), ledger_(ledger), thread_([this] { Loop(); }) {}

VisibilityProbe::~VisibilityProbe() {
  running_ = false;
  if (thread_.joinable()) thread_.join();
}

void VisibilityProbe::Add(size_t index) {
  std::lock_guard lock(mu_);
  outstanding_[ledger_.events[index].tenant].push_back(index);
}

size_t VisibilityProbe::Outstanding() {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (const auto& [t, v] : outstanding_) n += v.size();
  return n;
}

std::vector<std::pair<size_t, int64_t>> VisibilityProbe::Results() {
  std::lock_guard lock(mu_);
  return results_;
}

void VisibilityProbe::Loop() {
  std::unique_ptr<pqxx::connection> conn;
  std::set<int> ready;  // tenants whose messages table exists
  while (running_.load()) {
    std::map<int, std::vector<size_t>> work;
    {
      std::lock_guard lock(mu_);
      work = outstanding_;
    }
    std::vector<std::pair<size_t, int64_t>> seen;
    try {
      if (!conn) conn = std::make_unique<pqxx::connection>(dsn_);
      pqxx::work tx(*conn);
      // One round trip per poll: the probe must not load the database it measures.
      std::string sql;
      for (const auto& [tenant, indexes] : work) {
        if (indexes.empty()) continue;
        const std::string schema = SchemaOf(ledger_.tenants[static_cast<size_t>(tenant)]);
        if (!ready.count(tenant)) {
          pqxx::result exists =
              tx.exec_params("SELECT to_regclass($1) IS NOT NULL", schema + ".messages");
          if (!exists[0][0].as<bool>()) continue;
          ready.insert(tenant);
        }
        std::string ids;
        for (size_t idx : indexes) {
          ids += (ids.empty() ? "" : ",") + tx.quote(ledger_.events[idx].key);
        }
        sql += (sql.empty() ? "" : " UNION ALL ") + std::string("SELECT message_id FROM ") +
               tx.quote_name(schema) + ".messages WHERE message_id IN (" + ids + ")";
      }
      std::set<std::string> found;
      if (!sql.empty()) {
        for (const auto& row : tx.exec(sql)) found.insert(row[0].c_str());
      }
      tx.commit();
      const int64_t now = NowUnixMicros();
      for (const auto& [tenant, indexes] : work) {
        for (size_t idx : indexes) {
          if (found.count(ledger_.events[idx].key)) {
            seen.emplace_back(idx, now - ledger_.records[idx].sent_unix_us);
          }
        }
      }
    } catch (const std::exception&) {
      conn.reset();  // PostgreSQL away or busy: try again next round
    }
    if (!seen.empty()) {
      std::lock_guard lock(mu_);
      for (const auto& [idx, lat] : seen) {
        auto& v = outstanding_[ledger_.events[idx].tenant];
        v.erase(std::remove(v.begin(), v.end(), idx), v.end());
        results_.emplace_back(idx, lat);
      }
    }
    std::this_thread::sleep_for(milliseconds(20));  // poll period
  }
}

std::map<std::string, std::string> TableDigests(const std::string& dsn,
                                                const std::vector<std::string>& tenants) {
  std::map<std::string, std::string> out;
  pqxx::connection conn(dsn);
  pqxx::work tx(conn);
  for (const auto& tenant : tenants) {
    const std::string schema = SchemaOf(tenant);
    pqxx::result exists =
        tx.exec_params("SELECT to_regclass($1) IS NOT NULL", schema + ".messages");
    if (!exists[0][0].as<bool>()) continue;
    std::string digest;
    for (const char* table : {"chats", "messages", "contacts", "agents", "onboarding_log"}) {
      pqxx::row r = tx.exec1(
          "SELECT count(*) || ':' || coalesce(md5(string_agg(x, E'\\n' ORDER BY x)), '') FROM "
          "(SELECT (to_jsonb(t) - 'ver_ts' - 'ver_src' - 'ver_seq' - 'created_at' - "
          "'updated_at' - 'id')::text AS x FROM " +
          tx.quote_name(schema) + "." + tx.quote_name(table) + " t) q");
      digest += std::string(table) + "=" + r[0].c_str() + " ";
    }
    out[tenant] = digest;
  }
  tx.commit();
  return out;
}

double PercentileMs(std::vector<int64_t> samples, double pct) {
  if (samples.empty()) return -1;
  std::sort(samples.begin(), samples.end());
  const double rank = std::ceil(pct / 100.0 * static_cast<double>(samples.size()));
  const size_t idx =
      static_cast<size_t>(std::clamp(rank, 1.0, static_cast<double>(samples.size()))) - 1;
  return static_cast<double>(samples[idx]) / 1000.0;
}

void Report::Print() const {
  auto num = [](double v, int prec = 1) {
    if (v < 0) return std::string("-");
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*f", prec, v);
    return std::string(buf);
  };
  std::ostringstream out;
  out << "\n[chaos] ==== report: " << scenario << " (events " << events << ", seed "
      << Settings::Get().seed << ") ====\n"
      << "  published            " << tally.published << "\n"
      << "  applied              " << tally.applied << "\n"
      << "  superseded (stale)   " << tally.superseded << "\n"
      << "  exhausted            " << tally.exhausted << "  (" << tally.ExhaustedSummary() << ")\n"
      << "  redeliveries         " << redeliveries << "\n"
      << "  lost                 " << tally.lost
      << "   = published - applied - superseded - exhausted\n"
      << "  duplicates           " << tally.duplicates << "\n"
      << "  unexpected exhausted " << tally.unexpected_exhausted << ", wrong reason "
      << tally.wrong_reason << ", wrong payload " << tally.wrong_payload << ", stray "
      << tally.stray_exhausted << "\n"
      << "  state mismatches     " << tally.state_mismatch << ", unexpected rows "
      << tally.unexpected_rows << ", schema mismatches " << tally.schema_mismatch << "\n"
      << "  publish s            " << num(publish_s) << "\n"
      << "  recovery s           " << num(recovery_s) << "\n"
      << "  drain s              " << num(drain_s) << "\n"
      << "  peak RSS processor   " << num(peak_rss_mb) << " MB\n";
  for (const auto& [k, v] : extra) out << "  " << k << ": " << v << "\n";
  for (const auto& p : tally.problems) out << "  ! " << p << "\n";
  std::cout << out.str() << std::flush;

  const std::string& file = Settings::Get().report_file;
  if (!file.empty()) {
    std::ofstream md(file, std::ios::app);
    std::string notes;
    for (const auto& [k, v] : extra) notes += (notes.empty() ? "" : "; ") + k + ": " + v;
    md << "| " << scenario << " | " << events << " | " << tally.published << " | " << tally.applied
       << " | " << tally.superseded << " | " << tally.exhausted << " (" << tally.ExhaustedSummary()
       << ") | " << redeliveries << " | " << tally.lost << " | " << tally.duplicates << " | "
       << num(recovery_s) << " | " << num(drain_s) << " | " << num(peak_rss_mb, 0) << " | "
       << (notes.empty() ? "" : notes) << (tally.Clean() ? "" : " **FAILED**") << " |\n";
  }
}

}  // namespace evp::chaos
