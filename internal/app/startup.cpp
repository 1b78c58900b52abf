#include "app/startup.hpp"

#include <malloc.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/signals.hpp"
#include "observability/logging.hpp"
#include "pipeline/consumer_loop.hpp"
#include "postgres/dsn.hpp"
#include "postgres/pg_store.hpp"

namespace evp::app {

using std::chrono::milliseconds;

namespace {
// How long a deleted stream or consumer is left to the server's background removal before it
// is recreated.
constexpr milliseconds kStreamRecreateDelay{3000};
}  // namespace

Config LoadConfigOrExit(Binary binary, const char* binary_name) {
  auto cfg = Config::FromProcessEnvironment(binary);
  std::vector<std::string> errors = cfg.ok() ? std::vector<std::string>{} : cfg.error();
  if (cfg.ok() && !cfg->postgres_dsn.empty()) {
    if (std::string e = postgres::DsnError(cfg->postgres_dsn); !e.empty()) {
      errors.push_back("POSTGRES_DSN=****: " + e);
    }
  }
  // A credentials file that cannot be read now will not appear later: nats.c would retry the
  // connection forever with "error opening file".
  if (cfg.ok() && !cfg->nats_creds_file.empty() &&
      access(cfg->nats_creds_file.c_str(), R_OK) != 0) {
    errors.push_back("NATS_CREDS_FILE='" + cfg->nats_creds_file +
                     "': cannot be read: " + std::strerror(errno));
  }
  if (!errors.empty()) {
    std::fprintf(stderr, "%s: invalid configuration:\n", binary_name);
    for (const auto& e : errors) std::fprintf(stderr, "  %s\n", e.c_str());
    std::exit(2);
  }
  NameDatabaseSessions(binary_name);
  return std::move(cfg).value();
}

void WarnAboutMisspeltSettings() {
  std::vector<std::string> names;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view kv(*e);
    names.emplace_back(kv.substr(0, kv.find('=')));
  }
  for (const auto& [name, setting] : Config::NearMisses(names)) {
    observability::LogWarn("environment variable is not a setting and is ignored; a typo?",
                           {{"variable", name}, {"did_you_mean", setting}});
  }
}

Config StartService(Binary binary, const char* binary_name, std::atomic<bool>& stop) {
  Config config = LoadConfigOrExit(binary, binary_name);
  observability::InitLogging(binary_name, config.log_level, config.log_format);
  WarnAboutMisspeltSettings();
  InstallStopSignals(stop, config.shutdown_grace, [](std::string_view line) {
    observability::LogWarn(line);
    spdlog::default_logger_raw()->flush();  // an _exit may follow
  });
  BoundDatabaseConnectTimeout();
  // Builds without jemalloc (EVP_JEMALLOC=OFF) allocate with glibc, which gives every thread
  // that allocates at once a heap (arena) of its own, up to 8 per core, each keeping its
  // peak. Batches are built on one thread and freed on another: two arenas took the peak RSS
  // under a 200,000-event backlog from 86 to 62-65 MB for the same throughput (bench/run.sh,
  // docs/performance.md). An operator's own setting wins. (No effect under jemalloc.)
  if (std::getenv("MALLOC_ARENA_MAX") == nullptr && std::getenv("GLIBC_TUNABLES") == nullptr) {
    mallopt(M_ARENA_MAX, 2);
  }
  return config;
}

observability::Readiness ReadinessOf(bool nats, bool postgres, bool consumers, bool stopping) {
  const bool ready = nats && postgres && consumers && !stopping;
  auto flag = [](bool b) { return b ? "true" : "false"; };
  return {ready, std::string("{\"ready\":") + flag(ready) + ",\"nats\":" + flag(nats) +
                     ",\"postgres\":" + flag(postgres) + ",\"consumers\":" + flag(consumers) +
                     ",\"stopping\":" + flag(stopping) + "}"};
}

bool StartHttp(observability::HttpServer& http, int port) {
  const int bound = http.Start(port);
  if (bound < 0) {
    observability::LogError("cannot listen on HTTP_PORT", {{"port", port}});
    return false;
  }
  observability::LogInfo("http endpoints up", {{"port", bound}});
  return true;
}

bool MigrateOpsWhenReachable(const Config& config, const std::atomic<bool>& stop) {
  while (!stop.load()) {
    auto r = postgres::MigrateOps(config.postgres_dsn, config.ops_schema);
    if (r.ok()) return true;
    observability::LogWarn("PostgreSQL not ready; retrying in 2s", {{"error", r.error()}});
    pipeline::SleepUnlessStopped(milliseconds(2000), stop);
  }
  return false;
}

std::shared_ptr<nats::NatsConnection> ConnectNatsWhenReachable(
    const Config& config, const std::string& name, const std::atomic<bool>& stop,
    std::atomic<std::shared_ptr<nats::NatsConnection>>& connected) {
  std::shared_ptr<nats::NatsConnection> conn;
  while (!stop.load()) {
    if (!conn) {
      auto c = nats::NatsConnection::Connect(config, name);
      if (c.ok()) {
        conn = c.value();
        connected.store(conn);
      } else {
        observability::LogWarn("NATS not ready; retrying in 2s", {{"error", c.error()}});
      }
    }
    if (conn) {
      auto streams = conn->EnsureStreams(config);
      if (streams.ok()) return conn;
      observability::LogWarn("JetStream not ready; retrying in 2s", {{"error", streams.error()}});
    }
    pipeline::SleepUnlessStopped(milliseconds(2000), stop);
  }
  connected.store(nullptr);
  return nullptr;
}

std::unique_ptr<nats::JetStreamSource> BindWhenReady(
    const Config& config, const std::shared_ptr<nats::NatsConnection>& conn,
    const nats::ConsumerSpec& spec, const std::atomic<bool>& stop) {
  while (!stop.load()) {
    auto ensured = conn->EnsureConsumer(spec);
    if (ensured.ok()) {
      auto src = nats::JetStreamSource::Bind(conn, spec);
      if (src.ok()) {
        src.value()->SetRecovery([&config, conn, spec]() -> Result<Unit, std::string> {
          if (!conn->StreamExists(spec.stream) || !conn->ConsumerExists(spec)) {
            // Deleted by an operator. nats-server removes a deleted stream's or consumer's
            // files in the background; one recreated at once can lose its new files to that
            // removal (seen with 2.9.10: "error opening msg block file"). Give it time.
            observability::LogWarn("stream or consumer missing; recreating it shortly",
                                   {{"stream", spec.stream}, {"consumer", spec.durable}});
            std::this_thread::sleep_for(kStreamRecreateDelay);
          }
          auto streams = conn->EnsureStreams(config);
          if (!streams.ok()) return streams;
          return conn->EnsureConsumer(spec);
        });
        return std::move(src).value();
      }
      observability::LogWarn("cannot bind consumer; retrying in 2s", {{"error", src.error()}});
    } else {
      observability::LogWarn("cannot create consumer; retrying in 2s",
                             {{"error", ensured.error()}});
    }
    pipeline::SleepUnlessStopped(milliseconds(2000), stop);
  }
  return nullptr;
}

}  // namespace evp::app

namespace evp::app {

namespace {
int64_t SteadyNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

DatabaseProbe::DatabaseProbe(const Config& config, std::chrono::milliseconds interval)
    : stale_after_(std::max(milliseconds(5000), 5 * interval)) {
  thread_ = std::thread([this, dsn = config.postgres_dsn, ops = config.ops_schema,
                         prefix = config.tenant_schema_prefix, interval] {
    postgres::PgStore store(dsn, ops, prefix);
    while (!stop_.load()) {
      const int64_t started_ns = SteadyNowNs();
      const bool ok = store.Ping();
      if (ok) {
        if (stale_reported_.exchange(false)) {
          observability::LogInfo("database answers again",
                                 {{"ping_ms", (SteadyNowNs() - started_ns) / 1'000'000}});
        }
        last_ok_ns_ = SteadyNowNs();
      } else {
        // Each loop then stops fetching until its own connection answers, rather than
        // fetching events only to fail their write.
        std::lock_guard lock(mu_);
        if (ok_.load() && !watched_.empty()) {
          observability::LogWarn("database unreachable; pausing fetches");
        }
        for (pipeline::LoopHealth* h : watched_) h->store_ok = false;
      }
      ok_ = ok;
      pipeline::SleepUnlessStopped(interval, stop_);
    }
  });
}

bool DatabaseProbe::ok() const {
  if (!ok_.load()) return false;
  const auto since_ok = std::chrono::nanoseconds(SteadyNowNs() - last_ok_ns_.load());
  if (since_ok <= stale_after_) return true;
  if (!stale_reported_.exchange(true)) {
    observability::LogWarn(
        "database not answering: no ping has succeeded for a while; not ready",
        {{"since_last_answer_ms", std::chrono::duration_cast<milliseconds>(since_ok).count()}});
  }
  return false;
}

void DatabaseProbe::Watch(pipeline::LoopHealth& health) {
  std::lock_guard lock(mu_);
  watched_.push_back(&health);
}

DatabaseProbe::~DatabaseProbe() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void BoundDatabaseConnectTimeout() { setenv("PGCONNECT_TIMEOUT", "5", /*overwrite=*/0); }

void NameDatabaseSessions(const char* binary_name) {
  setenv("PGAPPNAME", binary_name, /*overwrite=*/0);
}

}  // namespace evp::app
