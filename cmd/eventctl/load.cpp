#include "load.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
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

struct LoadOptions {
  double rate = 1000;  // events/s in total; 0 = as fast as possible
  std::string duration = "10s";
  int64_t count = 0;  // when > 0, stop after this many events instead of the duration
  int tenants = 10;
  std::string tenant_prefix = "load";
  std::string mix = "standard";
  int concurrency = 2;
  int history_items = 100;
  std::string run_id;
  bool quiet = false;
};

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
  return out;
}

int64_t NowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Builds events so that updates refer to rows an earlier event of the same run created.
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
    auto& known = messages_[tenant_index];
    if (type == EventType::kMessagesUpdate && known.empty()) type = EventType::kMessagesUpsert;
    const uint64_t seed = (static_cast<uint64_t>(worker_) << 40) | n;
    handlers::SampleOptions so{seed, NowUnix(), options_.history_items};
    nlohmann::json body = handlers::SamplePayload(type, tenant, so);
    const std::string msg_prefix = options_.run_id + "-w" + std::to_string(worker_) + "-";
    if (type == EventType::kMessagesUpsert) {
      body["message_id"] = msg_prefix + std::to_string(n);
      if (known.size() < 4096)
        known.push_back(n);
      else
        known[rng_() % known.size()] = n;
    } else if (type == EventType::kMessagesUpdate) {
      body["message_id"] = msg_prefix + std::to_string(known[rng_() % known.size()]);
      body.erase("timestamp");  // versioned by publish time: always the newest
    }
    return {routing::SubjectFor(type, tenant), body.dump()};
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
  std::map<int, std::vector<uint64_t>> messages_;
};

int RunLoad(const Config& config, const LoadOptions& o) {
  auto mix = ParseMix(o.mix);
  if (!mix.ok()) {
    std::fprintf(stderr, "%s\n", mix.error().c_str());
    return 2;
  }
  auto duration = ParseDuration(o.duration);
  if (!duration) {
    std::fprintf(stderr, "--duration must look like 30s, 5m or 500ms\n");
    return 2;
  }
  const std::string run_id = o.run_id.empty() ? "load" + std::to_string(NowUnix()) : o.run_id;
  LoadOptions opts = o;
  opts.run_id = run_id;
  std::atomic<int64_t> published{0};
  std::atomic<int64_t> errors{0};
  std::atomic<bool> done{false};
  std::atomic<int> connect_failures{0};
  const auto started = Clock::now();
  const auto deadline = started + *duration;
  std::vector<std::thread> workers;
  for (int w = 0; w < o.concurrency; ++w) {
    workers.emplace_back([&, w] {
      auto conn = nats::NatsConnection::Connect(config, "eventctl-load");
      if (!conn.ok()) {
        std::fprintf(stderr, "%s\n", conn.error().c_str());
        connect_failures.fetch_add(1);
        return;
      }
      EventFactory factory(mix.value(), opts, w);
      const double per_worker_rate = o.rate > 0 ? o.rate / o.concurrency : 0;
      const int64_t quota = o.count > 0 ? (o.count + o.concurrency - 1 - w) / o.concurrency : -1;
      int64_t n = 0;
      while (true) {
        if (quota >= 0 ? n >= quota : Clock::now() >= deadline) break;
        if (per_worker_rate > 0) {
          const auto due = started + std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(n / per_worker_rate));
          if (due > Clock::now()) std::this_thread::sleep_until(due);
        }
        auto [subject, body] = factory.Next(static_cast<uint64_t>(n));
        const std::string msg_id = run_id + "-w" + std::to_string(w) + "-" + std::to_string(n);
        auto r = (*conn)->PublishAsync(subject, body, msg_id);
        if (r.ok()) {
          published.fetch_add(1, std::memory_order_relaxed);
        } else {
          errors.fetch_add(1, std::memory_order_relaxed);
        }
        ++n;
      }
      auto complete = (*conn)->PublishAsyncComplete(std::chrono::seconds(60));
      if (!complete.ok()) std::fprintf(stderr, "\n%s\n", complete.error().c_str());
      errors.fetch_add((*conn)->TakeAsyncErrors());
    });
  }
  std::thread progress([&] {
    int64_t last = 0;
    auto last_t = Clock::now();
    while (!done.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      auto now = Clock::now();
      if (now - last_t < std::chrono::seconds(1) || o.quiet) continue;
      const int64_t p = published.load();
      std::fprintf(
          stderr, "\rpublished %lld  (%.0f events/s)  errors %lld   ", static_cast<long long>(p),
          static_cast<double>(p - last) / std::chrono::duration<double>(now - last_t).count(),
          static_cast<long long>(errors.load()));
      last = p;
      last_t = now;
    }
  });
  for (auto& t : workers) t.join();
  done = true;
  progress.join();
  const double secs = std::chrono::duration<double>(Clock::now() - started).count();
  const int64_t ok = published.load() - errors.load();
  if (!o.quiet) std::fprintf(stderr, "\r%70s\r", "");
  std::printf(
      "run %s: published %lld events (%lld acknowledged, %lld errors) in %.2f s: %.0f events/s\n",
      run_id.c_str(), static_cast<long long>(published.load()), static_cast<long long>(ok),
      static_cast<long long>(errors.load()), secs, static_cast<double>(ok) / secs);
  return (errors.load() == 0 && connect_failures.load() == 0) ? 0 : 1;
}

}  // namespace

std::function<int(const Config&)> AddLoadCommand(CLI::App& app) {
  auto o = std::make_shared<LoadOptions>();
  auto* cmd = app.add_subcommand("load", "generate load: realistic events at a target rate");
  cmd->add_option("--rate", o->rate, "events per second in total (0 = as fast as possible)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 10'000'000.0));
  cmd->add_option("--duration", o->duration, "how long to publish (500ms, 30s, 5m)")
      ->capture_default_str();
  cmd->add_option("--count", o->count, "publish exactly this many events (overrides --duration)")
      ->check(CLI::Range(int64_t{0}, int64_t{1'000'000'000}));
  cmd->add_option("--tenants", o->tenants, "number of tenants")
      ->capture_default_str()
      ->check(CLI::Range(1, 100'000));
  cmd->add_option("--tenant-prefix", o->tenant_prefix, "tenant ids are <prefix>_tNNNN")
      ->capture_default_str();
  cmd->add_option("--mix,--subjects", o->mix,
                  "'standard' or type=weight list, e.g. messages.upsert=3,history.messages=1")
      ->capture_default_str();
  cmd->add_option("--concurrency", o->concurrency, "publishing connections")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd->add_option("--history-items", o->history_items, "items per history event")
      ->capture_default_str()
      ->check(CLI::Range(0, 100'000));
  cmd->add_option("--run-id", o->run_id, "prefix of the Nats-Msg-Ids (default: load<unix time>)");
  cmd->add_flag("--quiet", o->quiet, "no progress line");
  return [o, cmd](const Config& config) -> int {
    if (!*cmd) return -1;
    return RunLoad(config, *o);
  };
}

}  // namespace evp::eventctl
