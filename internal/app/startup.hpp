#pragma once
// Start-up steps shared by the binaries: load configuration (exit 2 on bad values), then wait
// (not ready) for PostgreSQL and NATS instead of crashing when they are not up yet.
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "nats/jetstream.hpp"
#include "observability/http_server.hpp"
#include "pipeline/consumer_loop.hpp"

namespace evp::app {

// Prints every configuration error to stderr and exits 2 when the environment is invalid.
Config LoadConfigOrExit(Binary binary, const char* binary_name);

// What every service does first: load the configuration (exit 2 on errors), start logging,
// let SIGTERM/SIGINT set `stop` (a second signal, or the grace period running out, ends the
// process), and bound libpq's connect timeout.
Config StartService(Binary binary, const char* binary_name, std::atomic<bool>& stop);

// Logs a warning for each environment variable that looks like a misspelt setting
// (Config::NearMisses): such a variable is ignored, and its setting keeps its default.
void WarnAboutMisspeltSettings();

// The /readyz answer: ready when every part is up and the service is not stopping; the
// detail names each part.
observability::Readiness ReadinessOf(bool nats, bool postgres, bool consumers, bool stopping);

// Starts the HTTP endpoints on `port`; logs and returns false when it cannot listen.
bool StartHttp(observability::HttpServer& http, int port);

// Applies the ops migrations, retrying every 2 s until they succeed or stop is set.
bool MigrateOpsWhenReachable(const Config& config, const std::atomic<bool>& stop);

// Connects to NATS and creates/updates the streams, retrying until success or stop.
// `connected` holds the connection from the moment it is made (for /readyz, while the
// streams or PostgreSQL are not ready yet); empty again when stopped before success. A
// reader keeps what it loaded alive.
std::shared_ptr<nats::NatsConnection> ConnectNatsWhenReachable(
    const Config& config, const std::string& name, const std::atomic<bool>& stop,
    std::atomic<std::shared_ptr<nats::NatsConnection>>& connected);

// Creates/updates the consumer and binds a pull subscription, retrying until success or stop.
// The source recreates the streams (from `config`, which must outlive it) and the consumer
// when they are deleted while it runs.
std::unique_ptr<nats::JetStreamSource> BindWhenReady(
    const Config& config, const std::shared_ptr<nats::NatsConnection>& conn,
    const nats::ConsumerSpec& spec, const std::atomic<bool>& stop);

}  // namespace evp::app

namespace evp::app {

// Pings PostgreSQL every interval on its own connection, for /readyz: a database outage
// shows even when no batch needs it. A failed ping also pauses the watched loops' fetching
// (SPEC §11: no event should use up a delivery on a database known to be down). Thread-safe.
class DatabaseProbe {
 public:
  DatabaseProbe(const Config& config, std::chrono::milliseconds interval);
  ~DatabaseProbe();
  DatabaseProbe(const DatabaseProbe&) = delete;
  DatabaseProbe& operator=(const DatabaseProbe&) = delete;
  // The last ping succeeded, and one did within the last few seconds: a ping that hangs (a
  // server that accepts connections but does not answer) makes it false too.
  bool ok() const;
  // Marks `health` as without a database whenever a ping fails; it must outlive the probe.
  void Watch(pipeline::LoopHealth& health);

 private:
  std::atomic<bool> ok_{false};
  std::chrono::milliseconds stale_after_;
  std::atomic<int64_t> last_ok_ns_{0};  // steady clock, of the last successful ping
  mutable std::atomic<bool> stale_reported_{false};
  std::mutex mu_;
  std::vector<pipeline::LoopHealth*> watched_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// libpq waits for the OS TCP timeout on an unreachable host; bound it unless the operator
// chose a value (PGCONNECT_TIMEOUT or connect_timeout in the DSN).
void BoundDatabaseConnectTimeout();

// Every libpq session of the binary shows `binary_name` as its application_name (in
// pg_stat_activity and the server log), unless the operator chose one (PGAPPNAME or
// application_name in the DSN).
void NameDatabaseSessions(const char* binary_name);

}  // namespace evp::app
