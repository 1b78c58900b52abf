#include "load.hpp"

#include <signal.h>  // NOLINT(modernize-deprecated-headers): sigaction, kill (POSIX)
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <latch>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "core/duration.hpp"
#include "handlers/samples.hpp"
#include "nats/jetstream.hpp"
#include "routing/subject.hpp"

namespace evp::eventctl {
namespace {

using Clock = std::chrono::steady_clock;
// Pacing granularity of a rate-limited load: events due within one tick go out together.
constexpr std::chrono::milliseconds kPaceTick{1};
// Connections of a paced load without --concurrency: one per this many events/s. Each
// connection brings its own client threads (reader, flusher, PubAck delivery), whose
// wake-ups cost more than the events at moderate rates: at 5,000 events/s, 2 connections
// took 3.5 s of CPU per 10 s and 1 took 2.1 s, CPU taken from the system under test. One
// connection publishes about 60,000 events/s unpaced, so this leaves it a wide margin.
constexpr double kPacedEventsPerConnection = 20'000;
// Connections of an unpaced load without --concurrency: 2 publish about a fifth faster than 1.
constexpr int kUnpacedConnections = 2;
constexpr int kMaxConnections = 64;

struct LoadOptions {
  double rate = 1000;  // events/s in total; 0 = as fast as possible
  std::string duration = "10s";
  int64_t count = 0;  // when > 0, stop after this many events instead of the duration
  int tenants = 10;
  std::string tenant_prefix = "load";
  std::string mix = "standard";
  std::string subjects;  // comma-separated types or subjects, equal weights; instead of mix
  int concurrency = 0;   // publishing connections; 0 = DefaultConnections(rate)
  int history_items = 100;
  std::string run_id;
  bool quiet = false;
  bool prebuild = false;  // build every event before the first publish (needs count)
};

int DefaultConnections(double rate) {
  if (rate <= 0) return kUnpacedConnections;
  return static_cast<int>(
      std::clamp(std::ceil(rate / kPacedEventsPerConnection), 1.0, double{kMaxConnections}));
}

struct MixEntry {
  EventType type;
  double weight;
};

// "standard" = 60 % messages.upsert, 20 % messages.update, 10 % chats.upsert, 10 %
// contacts.upsert (the benchmark's mix); otherwise "type=weight,type=weight".
Result<std::vector<MixEntry>, std::string> ParseMix(const std::string& text) {
  if (text == "standard") {
    return std::vector<MixEntry>{{EventType::kMessagesUpsert, 60},
                                 {EventType::kMessagesUpdate, 20},
                                 {EventType::kChatsUpsert, 10},
                                 {EventType::kContactsUpsert, 10}};
  }
  std::vector<MixEntry> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    auto eq = item.find('=');
    auto type = EventTypeFromName(item.substr(0, eq));
    if (!type) return Err{"unknown event type in --mix: '" + item.substr(0, eq) + "'"};
    double w = 1;
    if (eq != std::string::npos) {
      try {
        w = std::stod(item.substr(eq + 1));
      } catch (...) {
        return Err{"bad weight in --mix: '" + item + "'"};
      }
    }
    if (w < 0) return Err{"negative weight in --mix: '" + item + "'"};
    out.push_back({*type, w});
  }
  if (out.empty()) return Err{std::string("--mix is empty")};
  double total = 0;
  for (const auto& m : out) total += m.weight;
  if (total <= 0) return Err{std::string("--mix weights add up to 0: nothing to publish")};
  return out;
}

// "--subjects v1.messages.upsert,v1.chats.upsert.>" or "messages.upsert,chats.upsert": the
// event types of the subjects (the version token and a tenant or wildcard are optional),
// published in equal shares.
Result<std::vector<MixEntry>, std::string> ParseSubjects(const std::string& text) {
  std::vector<MixEntry> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::string name = item;
    if (name.rfind("v1.", 0) == 0) name = name.substr(3);
    std::optional<EventType> type = EventTypeFromName(name);
    if (!type) {
      // <domain>.<action>.<tenant or wildcard>
      const auto last = name.rfind('.');
      if (last != std::string::npos) type = EventTypeFromName(name.substr(0, last));
    }
    if (!type) return Err{"--subjects: '" + item + "' names no event type"};
    out.push_back({*type, 1});
  }
  if (out.empty()) return Err{std::string("--subjects is empty")};
  return out;
}

int64_t NowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Builds events so that updates refer to rows an earlier upsert of the same worker created
// in the same tenant (an update with nothing to refer to yet becomes that upsert).
class EventFactory {
 public:
  EventFactory(std::vector<MixEntry> mix, const LoadOptions& o, int worker)
      : mix_(std::move(mix)),
        options_(o),
        worker_(worker),
        rng_(static_cast<uint64_t>(worker) * 7919 + 17) {
    for (const auto& m : mix_) total_weight_ += m.weight;
  }

  // Subject and body of event number n of this worker.
  std::pair<std::string, std::string> Next(uint64_t n) {
    const int tenant_index = static_cast<int>(rng_() % static_cast<uint64_t>(options_.tenants));
    char tenant[64];
    std::snprintf(tenant, sizeof tenant, "%s_t%04d", options_.tenant_prefix.c_str(), tenant_index);
    EventType type = Pick();
    std::optional<EventType> upsert = UpsertOf(type);  // set for update types
    auto& known = known_[{tenant_index, upsert.value_or(type)}];
    if (upsert && known.empty()) {
      type = *upsert;
      upsert.reset();
    }
    const uint64_t seed = (static_cast<uint64_t>(worker_) << 40) | n;
    handlers::SampleOptions so{seed, NowUnix(), options_.history_items};
    nlohmann::json body = handlers::SamplePayload(type, tenant, so);
    if (type == EventType::kMessagesUpsert) {
      // Unique per run: message ids of earlier runs are not overwritten.
      body["message_id"] =
          options_.run_id + "-w" + std::to_string(worker_) + "-" + std::to_string(n);
    }
    if (upsert) {
      for (const auto& [field, value] : known[rng_() % known.size()].items()) body[field] = value;
      body.erase("timestamp");  // messages.update: versioned by publish time, the newest
    } else if (auto key = KeyFields(type); !key.empty()) {
      nlohmann::json k = nlohmann::json::object();
      for (const char* field : key) k[field] = body[field];
      if (known.size() < 4096) {
        known.push_back(std::move(k));
      } else {
        known[rng_() % known.size()] = std::move(k);
      }
    }
    return {routing::SubjectFor(type, tenant), body.dump()};
  }

 private:
  static std::optional<EventType> UpsertOf(EventType type) {
    switch (type) {
      case EventType::kChatsUpdate:
        return EventType::kChatsUpsert;
      case EventType::kMessagesUpdate:
        return EventType::kMessagesUpsert;
      case EventType::kContactsUpdate:
        return EventType::kContactsUpsert;
      default:
        return std::nullopt;
    }
  }
  static std::vector<const char*> KeyFields(EventType type) {
    switch (type) {
      case EventType::kChatsUpsert:
        return {"chat_id"};
      case EventType::kMessagesUpsert:
        return {"message_id"};
      case EventType::kContactsUpsert:
        return {"agent_id", "phone_number"};
      default:
        return {};
    }
  }

 private:
  EventType Pick() {
    double r = std::uniform_real_distribution<double>(0, total_weight_)(rng_);
    for (const auto& m : mix_) {
      if (r < m.weight) return m.type;
      r -= m.weight;
    }
    return mix_.back().type;
  }

  std::vector<MixEntry> mix_;
  const LoadOptions& options_;
  int worker_;
  std::mt19937_64 rng_;
  double total_weight_ = 0;
  std::map<std::pair<int, EventType>, std::vector<nlohmann::json>> known_;  // keys of upserts
};

std::atomic<bool> g_interrupted{false};

extern "C" void OnInterrupt(int) { g_interrupted.store(true); }

// Default run id: the time plus random bits, so that two runs started in the same second
// never share Nats-Msg-Ids (JetStream would drop one run's events as duplicates).
std::string DefaultRunId() {
  std::random_device rd;
  char suffix[16];
  std::snprintf(suffix, sizeof suffix, "%06x", rd() & 0xFFFFFFu);
  return "load" + std::to_string(NowUnix()) + "-" + suffix;
}

int RunLoad(const Config& config, const LoadOptions& o) {
  const int connections = o.concurrency > 0 ? o.concurrency : DefaultConnections(o.rate);
  if (!o.subjects.empty() && o.mix != "standard") {
    std::fprintf(stderr, "give either --subjects or --mix, not both\n");
    return 2;
  }
  auto mix = o.subjects.empty() ? ParseMix(o.mix) : ParseSubjects(o.subjects);
  if (!mix.ok()) {
    std::fprintf(stderr, "%s\n", mix.error().c_str());
    return 2;
  }
  auto duration = ParseDuration(o.duration);
  if (!duration) {
    std::fprintf(stderr, "--duration must look like 30s, 5m or 500ms\n");
    return 2;
  }
  if (o.prebuild && (o.count == 0 || o.rate != 0)) {
    std::fprintf(stderr, "--prebuild needs --count and --rate 0\n");
    return 2;
  }
  if (auto err = routing::TenantIdError(o.tenant_prefix + "_t0000")) {
    std::fprintf(stderr, "--tenant-prefix '%s' does not make valid tenant ids: %s\n",
                 o.tenant_prefix.c_str(), err->c_str());
    return 2;
  }
  const std::string run_id = o.run_id.empty() ? DefaultRunId() : o.run_id;
  LoadOptions opts = o;
  opts.run_id = run_id;
  struct sigaction sa {};
  sa.sa_handler = OnInterrupt;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  std::atomic<int64_t> published{0};     // handed to the client library
  std::atomic<int64_t> refused{0};       // refused by the client library before sending
  std::atomic<int64_t> acknowledged{0};  // stored by JetStream (PubAck)
  std::atomic<int64_t> duplicates{0};    // acknowledged as duplicates (Nats-Msg-Id seen before)
  std::atomic<int64_t> failed{0};        // negative PubAcks
  std::atomic<bool> done{false};
  std::atomic<int> connect_failures{0};
  auto started = Clock::now();
  const auto deadline = started + *duration;
  // --prebuild: every worker builds its events, then all start publishing together.
  std::latch built(connections);
  std::once_flag publish_start;
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(connections));
  for (int w = 0; w < connections; ++w) {
    workers.emplace_back([&, w] {
      auto conn = nats::NatsConnection::Connect(config, "eventctl-load", /*track_acks=*/true);
      if (!conn.ok()) {
        std::fprintf(stderr, "%s\n", conn.error().c_str());
        connect_failures.fetch_add(1);
        if (o.prebuild) built.count_down();
        return;
      }
      auto count_acks = [&] {
        const auto acks = (*conn)->TakeAcknowledged();
        const auto dup = static_cast<int64_t>(acks.duplicates.size());
        acknowledged.fetch_add(static_cast<int64_t>(acks.stored.size()) + dup);
        duplicates.fetch_add(dup);
        failed.fetch_add((*conn)->TakeAsyncErrors());
      };
      EventFactory factory(mix.value(), opts, w);
      const double per_worker_rate = o.rate > 0 ? o.rate / connections : 0;
      const int64_t quota = o.count > 0 ? (o.count + connections - 1 - w) / connections : -1;
      int64_t n = 0;
      std::vector<std::pair<std::string, std::string>> prebuilt;
      if (o.prebuild) {
        for (int64_t i = 0; i < quota; ++i)
          prebuilt.push_back(factory.Next(static_cast<uint64_t>(i)));
        built.arrive_and_wait();
        std::call_once(publish_start, [&] {
          started = Clock::now();
          const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
          std::printf("publishing from %lld.%06lld\n", static_cast<long long>(us / 1'000'000),
                      static_cast<long long>(us % 1'000'000));
          std::fflush(stdout);
        });
      }
      while (!g_interrupted.load()) {
        if (quota >= 0 ? n >= quota : Clock::now() >= deadline) break;
        if (per_worker_rate > 0) {
          // Workers take turns: worker w publishes at (n + w / connections) / per-worker rate.
          const double at =
              (static_cast<double>(n) + static_cast<double>(w) / connections) / per_worker_rate;
          const auto due = started + std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(at));
          if (quota < 0 && due >= deadline) break;
          // Wakes at most once per tick and publishes what fell due meanwhile in one burst:
          // a wake-up for each event cost about a third of the generator's CPU at 5,000
          // events/s, CPU taken from the processor and the servers on a shared machine.
          const auto now = Clock::now();
          if (due > now) std::this_thread::sleep_until(std::max(due, now + kPaceTick));
        }
        auto [subject, body] = o.prebuild ? std::move(prebuilt[static_cast<size_t>(n)])
                                          : factory.Next(static_cast<uint64_t>(n));
        const std::string msg_id = run_id + "-w" + std::to_string(w) + "-" + std::to_string(n);
        auto r = (*conn)->PublishAsync(subject, body, msg_id);
        (r.ok() ? published : refused).fetch_add(1, std::memory_order_relaxed);
        if (++n % 1024 == 0) count_acks();
      }
      auto complete = (*conn)->PublishAsyncComplete(std::chrono::seconds(60));
      if (!complete.ok()) std::fprintf(stderr, "\n%s\n", complete.error().c_str());
      count_acks();
    });
  }
  const bool tty = isatty(STDERR_FILENO) == 1;
  std::thread progress([&] {
    int64_t last = 0;
    auto last_t = Clock::now();
    // A live line on a terminal; a line every 5 s into a log.
    const auto every = tty ? std::chrono::seconds(1) : std::chrono::seconds(5);
    while (!done.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      auto now = Clock::now();
      if (now - last_t < every || o.quiet) continue;
      const int64_t p = published.load();
      std::fprintf(
          stderr, "%spublished %lld  (%.0f events/s)  acknowledged %lld  errors %lld   %s",
          tty ? "\r" : "", static_cast<long long>(p),
          static_cast<double>(p - last) / std::chrono::duration<double>(now - last_t).count(),
          static_cast<long long>(acknowledged.load()),
          static_cast<long long>(refused.load()) + static_cast<long long>(failed.load()),
          tty ? "" : "\n");
      last = p;
      last_t = now;
    }
  });
  for (auto& t : workers) t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - started).count();
  done = true;
  progress.join();
  const int64_t stored = acknowledged.load() - duplicates.load();
  const int64_t errors = refused.load() + failed.load();
  const int64_t unconfirmed =
      std::max<int64_t>(0, published.load() - acknowledged.load() - failed.load());
  if (!o.quiet && tty) std::fprintf(stderr, "\r%90s\r", "");
  // Publishes without a PubAck are named next to the errors: they were never stored.
  const std::string not_confirmed =
      unconfirmed > 0 ? ", " + std::to_string(unconfirmed) + " not confirmed" : "";
  std::printf(
      "run %s: published %lld events (%lld acknowledged%s, %lld errors) in %.2f s: %.0f "
      "events/s over %d connection%s%s\n",
      run_id.c_str(), static_cast<long long>(published.load()), static_cast<long long>(stored),
      not_confirmed.c_str(), static_cast<long long>(errors), secs,
      static_cast<double>(stored) / secs, connections, connections == 1 ? "" : "s",
      g_interrupted.load() ? " (interrupted)" : "");
  if (duplicates.load() > 0) {
    std::printf(
        "%lld publishes were dropped by JetStream as duplicates: their Nats-Msg-Id was used "
        "before (reused --run-id?)\n",
        static_cast<long long>(duplicates.load()));
  }
  if (unconfirmed > 0) {
    std::printf("%lld publishes were not confirmed by JetStream (no PubAck in time)\n",
                static_cast<long long>(unconfirmed));
  }
  const bool clean =
      errors == 0 && duplicates.load() == 0 && unconfirmed == 0 && connect_failures.load() == 0;
  if (g_interrupted.load()) return 130;
  return clean ? 0 : 1;
}

}  // namespace

std::function<int(const Config&)> AddLoadCommand(CLI::App& app) {
  auto o = std::make_shared<LoadOptions>();
  auto* cmd = app.add_subcommand("load", "generate load: realistic events at a target rate");
  cmd->add_option("--rate", o->rate,
                  "events per second in total, sent in 1 ms ticks (0 = as fast as possible)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 10'000'000.0));
  cmd->add_option("--duration", o->duration, "how long to publish (500ms, 30s, 5m)")
      ->capture_default_str();
  cmd->add_option("--count", o->count,
                  "publish exactly this many events (overrides --duration; 0 = use --duration)")
      ->check(CLI::Range(int64_t{0}, int64_t{1'000'000'000}));
  cmd->add_option("--tenants", o->tenants, "number of tenants")
      ->capture_default_str()
      ->check(CLI::Range(1, 100'000));
  cmd->add_option("--tenant-prefix", o->tenant_prefix, "tenant ids are <prefix>_tNNNN")
      ->capture_default_str();
  cmd->add_option("--mix", o->mix,
                  "event types to publish: 'standard' (60 % messages.upsert, 20 % "
                  "messages.update, 10 % chats.upsert, 10 % contacts.upsert) or a type=weight "
                  "list, e.g. messages.upsert=3,history.messages=1; updates refer to rows an "
                  "earlier upsert of the run created")
      ->capture_default_str();
  cmd->add_option("--subjects", o->subjects,
                  "instead of --mix: subjects or types in equal shares, e.g. "
                  "v1.messages.upsert,v1.chats.upsert.> (the tenant token is ignored)");
  cmd->add_option("--concurrency", o->concurrency,
                  "publishing connections (default: 2 with --rate 0, else one per 20,000 "
                  "events/s)")
      ->check(CLI::Range(1, kMaxConnections));
  cmd->add_option("--history-items", o->history_items, "items per history event")
      ->capture_default_str()
      ->check(CLI::Range(0, 100'000));
  cmd->add_option("--run-id", o->run_id,
                  "prefix of the Nats-Msg-Ids, unique per run (default: load<unix time>-<random>)");
  cmd->add_flag("--quiet", o->quiet, "no progress line");
  cmd->add_flag("--prebuild", o->prebuild,
                "build every event before publishing (with --count and --rate 0), print "
                "\"publishing from <unix time>\" when the first publish goes out, and time the "
                "run from there");
  return [o, cmd](const Config& config) -> int {
    if (!*cmd) return -1;
    return RunLoad(config, *o);
  };
}

}  // namespace evp::eventctl
