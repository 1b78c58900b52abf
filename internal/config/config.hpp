#pragma once
// Configuration of every binary, from the environment (12-factor). Each key has a default,
// bounds and a doc line; FromEnvironment() validates everything at start and reports every
// bad value at once. Immutable after load; safe to share between threads.
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/result.hpp"

namespace evp {

enum class Binary { kProcessor, kDlqWorker, kCli };

struct Config {
  using ms = std::chrono::milliseconds;

  // Connections and credentials.
  std::string nats_url;
  std::string nats_user;
  std::string nats_password;
  std::string nats_token;
  std::string nats_creds_file;
  std::string postgres_dsn;
  int db_pool_size = 4;
  int db_statement_cache = 2000;
  std::chrono::milliseconds db_lock_timeout{5000};  // 0 = wait for locks as long as it takes

  // HTTP and logs.
  int http_port = 8080;
  std::string log_level;
  std::string log_format;

  // Tenancy.
  std::string tenant_schema_prefix;
  std::string ops_schema;
  std::vector<std::string> tenants;  // empty = all tenants
  std::vector<std::string> metrics_tenants;

  // Streams and consumers.
  std::string realtime_stream;
  std::string history_stream;
  std::string dlq_stream;
  std::string advisory_stream;
  std::string realtime_consumer;
  std::string history_consumer;
  std::string dlq_consumer;
  ms realtime_max_age{};
  ms history_max_age{};
  ms dlq_max_age{};
  int stream_replicas = 1;

  // Pipeline.
  int batch_size = 4000;
  int64_t batch_max_bytes = 4 * 1024 * 1024;
  ms batch_max_wait{};
  ms ack_wait{};
  int max_deliver = 20;
  int max_ack_pending = 0;
  ms history_ack_wait{};
  int history_max_deliver = 10;
  ms nak_base_delay{};
  ms nak_max_delay{};
  ms ordering_grace{};
  int64_t max_event_bytes = 921600;
  ms shutdown_grace{};

  // DLQ worker.
  int dlq_workers = 4;
  ms dlq_base_delay{};
  ms dlq_max_delay{};
  int dlq_max_attempts = 5;
  ms dlq_ack_wait{};

  using Getenv = std::function<std::optional<std::string>(const std::string&)>;
  // Reads and validates. Errors: one line per bad key, naming the key, the value and the rule.
  static Result<Config, std::vector<std::string>> FromEnvironment(Binary binary,
                                                                  const Getenv& getenv);
  static Result<Config, std::vector<std::string>> FromProcessEnvironment(Binary binary);

  // Environment variable names that look like a misspelt setting (BATCH_SIZ, batch_size):
  // (name, the setting it resembles). Not an error: the environment is shared with other
  // software. Names that are a setting of any binary are never reported.
  static std::vector<std::pair<std::string, std::string>> NearMisses(
      const std::vector<std::string>& names);

  bool AllowsTenant(const std::string& company_id) const;

  // Effective configuration, secrets masked, one "KEY=value  # doc" line per key.
  std::vector<std::string> Describe() const;
};

// postgresql://user:secret@host/db -> postgresql://user:****@host/db (also password=... form).
std::string MaskDsn(const std::string& dsn);
// NATS_URL (comma-separated URLs) with credentials masked: user:password@ -> user:****@,
// token@ -> ****@.
std::string MaskNatsUrls(const std::string& urls);

// Why NATS_URL (one or more comma-separated nats:// or tls:// URLs, each with a host and an
// optional port from 1 to 65535) is not usable; empty when it is.
std::string NatsUrlsError(const std::string& urls);

}  // namespace evp
