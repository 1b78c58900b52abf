#include "config/config.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string_view>
#include <utility>

#include "core/duration.hpp"
#include "core/event.hpp"
#include "core/text.hpp"

namespace evp {
namespace {

using ms = std::chrono::milliseconds;

// One configuration key: how to read it, its default and its doc line.
struct Key {
  std::string name;
  std::string doc;
  std::string default_value;
  bool secret = false;
  // Parses value into cfg; returns an error text (without the key name) or "".
  std::function<std::string(Config&, const std::string&)> apply;
  // Prints the effective value.
  std::function<std::string(const Config&)> show;
};

std::string Trim(std::string s) {
  auto not_space = [](unsigned char c) { return !std::isspace(c); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  return s;
}

std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    item = Trim(item);
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) {
    if (!out.empty()) out += ",";
    out += s;
  }
  return out;
}

Key IntKey(std::string name, std::string doc, std::string def, int64_t lo, int64_t hi,
           std::function<void(Config&, int64_t)> set, std::function<int64_t(const Config&)> get) {
  Key k{std::move(name), std::move(doc), std::move(def), false, nullptr, nullptr};
  k.apply = [lo, hi, set = std::move(set)](Config& c, const std::string& v) -> std::string {
    int64_t n = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc() || p != v.data() + v.size()) return "must be an integer";
    if (n < lo || n > hi) {
      return "must be between " + std::to_string(lo) + " and " + std::to_string(hi);
    }
    set(c, n);
    return "";
  };
  k.show = [get = std::move(get)](const Config& c) { return std::to_string(get(c)); };
  return k;
}

Key DurationKey(std::string name, std::string doc, std::string def, ms lo, ms hi,
                const std::function<ms&(Config&)>& field) {
  Key k{std::move(name), std::move(doc), std::move(def), false, nullptr, nullptr};
  k.apply = [lo, hi, field](Config& c, const std::string& v) -> std::string {
    auto d = ParseDuration(v);
    if (!d) return "must be a duration such as 500ms, 6s, 5m or 1h";
    if (*d < lo || *d > hi) {
      return "must be between " + FormatDuration(lo) + " and " + FormatDuration(hi);
    }
    field(c) = *d;
    return "";
  };
  k.show = [field](const Config& c) { return FormatDuration(field(const_cast<Config&>(c))); };
  return k;
}

Key StringKey(std::string name, std::string doc, std::string def, std::string pattern,
              std::string rule, const std::function<std::string&(Config&)>& field,
              bool secret = false) {
  Key k{std::move(name), std::move(doc), std::move(def), secret, nullptr, nullptr};
  k.apply = [pattern = std::move(pattern), rule = std::move(rule), field](
                Config& c, const std::string& v) -> std::string {
    if (!pattern.empty() && !std::regex_match(v, std::regex(pattern))) return rule;
    field(c) = v;
    return "";
  };
  k.show = [field](const Config& c) { return field(const_cast<Config&>(c)); };
  return k;
}

const char* kTenantPattern = kTenantIdPattern.data();  // a literal: NUL-terminated
const char* kIdentPattern = "^[a-z_][a-z0-9_]{0,22}$";
const char* kIdentRule = "must match ^[a-z_][a-z0-9_]{0,22}$ (a lower-case SQL identifier)";
const char* kNamePattern = "^[A-Za-z0-9_-]{1,64}$";
const char* kNameRule = "must be 1-64 characters of A-Z a-z 0-9 _ -";

std::vector<Key> Keys(Binary binary) {
  const std::string http_default = binary == Binary::kDlqWorker ? "8081" : "8080";
  std::vector<Key> keys;
  {
    Key k = StringKey("NATS_URL", "NATS server URL(s), comma-separated", "nats://127.0.0.1:4222",
                      "", "", [](Config& c) -> std::string& { return c.nats_url; });
    k.apply = [](Config& c, const std::string& v) -> std::string {
      if (std::string e = NatsUrlsError(v); !e.empty()) return e;
      c.nats_url = v;
      return "";
    };
    keys.push_back(std::move(k));
  }
  keys.push_back(StringKey("NATS_USER", "NATS user name", "", "", "",
                           [](Config& c) -> std::string& { return c.nats_user; }));
  keys.push_back(StringKey(
      "NATS_PASSWORD", "NATS password (secret)", "", "", "",
      [](Config& c) -> std::string& { return c.nats_password; }, true));
  keys.push_back(StringKey(
      "NATS_TOKEN", "NATS auth token (secret)", "", "", "",
      [](Config& c) -> std::string& { return c.nats_token; }, true));
  keys.push_back(StringKey("NATS_CREDS_FILE", "path of a NATS .creds file", "", "", "",
                           [](Config& c) -> std::string& { return c.nats_creds_file; }));
  keys.push_back(StringKey(
      "POSTGRES_DSN", "PostgreSQL connection string (secret; required)", "", "^.+$",
      "is required (e.g. postgresql://user:pass@host:5432/db)",
      [](Config& c) -> std::string& { return c.postgres_dsn; }, true));
  keys.push_back(IntKey(
      "DB_POOL_SIZE", "PostgreSQL connections used for writes", "4", 1, 64,
      [](Config& c, int64_t v) { c.db_pool_size = static_cast<int>(v); },
      [](const Config& c) { return c.db_pool_size; }));
  keys.push_back(IntKey(
      "DB_STATEMENT_CACHE",
      "prepared statements kept per writer connection (each costs PostgreSQL 70-350 KB)", "2000",
      16, 1000000, [](Config& c, int64_t v) { c.db_statement_cache = static_cast<int>(v); },
      [](const Config& c) { return c.db_statement_cache; }));
  keys.push_back(DurationKey(
      "DB_LOCK_TIMEOUT",
      "longest wait of a write for a lock held elsewhere; then that tenant's events are "
      "retried later and the other tenants' commit (0 = no limit)",
      "5s", ms(0), ms(3'600'000), [](Config& c) -> ms& { return c.db_lock_timeout; }));
  keys.push_back(IntKey(
      "HTTP_PORT",
      "port of /healthz, /readyz and /metrics (default 8080 for events-processor, 8081 for "
      "dlq-worker)",
      http_default, 0, 65535, [](Config& c, int64_t v) { c.http_port = static_cast<int>(v); },
      [](const Config& c) { return c.http_port; }));
  keys.push_back(StringKey("LOG_LEVEL", "trace, debug, info, warn (or warning), error", "info",
                           "^(trace|debug|info|warn|warning|error)$",
                           "must be one of trace, debug, info, warn, error",
                           [](Config& c) -> std::string& { return c.log_level; }));
  keys.push_back(StringKey("LOG_FORMAT", "json (one object per line) or text", "json",
                           "^(json|text)$", "must be json or text",
                           [](Config& c) -> std::string& { return c.log_format; }));
  keys.push_back(StringKey("TENANT_SCHEMA_PREFIX", "prefix of every tenant schema", "tenant_",
                           kIdentPattern, kIdentRule,
                           [](Config& c) -> std::string& { return c.tenant_schema_prefix; }));
  keys.push_back(StringKey("OPS_SCHEMA", "schema of the tenant registry and exhausted events",
                           "events_ops", kIdentPattern, kIdentRule,
                           [](Config& c) -> std::string& { return c.ops_schema; }));
  {
    Key k{"TENANTS", "comma-separated tenant allow-list; empty = all tenants", "", false, nullptr,
          nullptr};
    k.apply = [](Config& c, const std::string& v) -> std::string {
      c.tenants = SplitList(v);
      std::map<std::string, std::string> by_lower;
      for (const auto& t : c.tenants) {
        if (!std::regex_match(t, std::regex(kTenantPattern))) {
          return "'" + t + "' is not a valid tenant id (" + kTenantPattern + ")";
        }
        auto [it, inserted] = by_lower.emplace(LowerAscii(t), t);
        if (!inserted && it->second != t) {
          return "'" + it->second + "' and '" + t +
                 "' differ only by case: they would share one schema, and the second "
                 "spelling seen is refused as invalid_tenant";
        }
      }
      return "";
    };
    k.show = [](const Config& c) { return Join(c.tenants); };
    keys.push_back(std::move(k));
  }
  {
    Key k{"METRICS_TENANTS",
          "tenants that get a company_id label on per-tenant metrics (keep it short)",
          "",
          false,
          nullptr,
          nullptr};
    k.apply = [](Config& c, const std::string& v) -> std::string {
      c.metrics_tenants = SplitList(v);
      if (c.metrics_tenants.size() > 20) return "at most 20 tenants (label cardinality)";
      for (const auto& t : c.metrics_tenants) {
        if (!std::regex_match(t, std::regex(kTenantPattern))) {
          return "'" + t + "' is not a valid tenant id (" + kTenantPattern + ")";
        }
      }
      return "";
    };
    k.show = [](const Config& c) { return Join(c.metrics_tenants); };
    keys.push_back(std::move(k));
  }
  auto name_key = [&](const char* key, const char* doc, const char* def,
                      std::string Config::*field) {
    keys.push_back(StringKey(key, doc, def, kNamePattern, kNameRule,
                             [field](Config& c) -> std::string& { return c.*field; }));
  };
  name_key("REALTIME_STREAM", "JetStream stream of realtime subjects", "EVENTS_REALTIME",
           &Config::realtime_stream);
  name_key("HISTORY_STREAM", "JetStream stream of v1.history.>", "EVENTS_HISTORY",
           &Config::history_stream);
  name_key("DLQ_STREAM", "JetStream stream of v1.dlq.>", "EVENTS_DLQ", &Config::dlq_stream);
  name_key("ADVISORY_STREAM", "JetStream stream keeping MAX_DELIVERIES advisories",
           "EVENTS_ADVISORIES", &Config::advisory_stream);
  name_key("REALTIME_CONSUMER",
           "durable consumer of the realtime stream (suffixed when TENANTS is set)",
           "events-processor-realtime", &Config::realtime_consumer);
  name_key("HISTORY_CONSUMER",
           "durable consumer of the history stream (suffixed when TENANTS is set)",
           "events-processor-history", &Config::history_consumer);
  name_key("DLQ_CONSUMER", "durable consumer of the DLQ stream (suffixed when TENANTS is set)",
           "dlq-worker", &Config::dlq_consumer);
  const ms kMinute(60'000);
  const ms kDay = kMinute * 60 * 24;
  auto dur_key = [&](const char* key, const char* doc, const char* def, ms lo, ms hi,
                     ms Config::*field) {
    keys.push_back(
        DurationKey(key, doc, def, lo, hi, [field](Config& c) -> ms& { return c.*field; }));
  };
  dur_key("REALTIME_MAX_AGE", "retention of the realtime stream", "720h", kMinute, kDay * 3650,
          &Config::realtime_max_age);
  dur_key("HISTORY_MAX_AGE", "retention of the history stream", "720h", kMinute, kDay * 3650,
          &Config::history_max_age);
  dur_key("DLQ_MAX_AGE", "retention of the DLQ stream", "168h", kMinute, kDay * 3650,
          &Config::dlq_max_age);
  keys.push_back(IntKey(
      "STREAM_REPLICAS", "replicas of each stream (3 on a NATS cluster)", "1", 1, 5,
      [](Config& c, int64_t v) { c.stream_replicas = static_cast<int>(v); },
      [](const Config& c) { return c.stream_replicas; }));
  keys.push_back(IntKey(
      "BATCH_SIZE", "messages fetched and written per batch", "4000", 1, 10000,
      [](Config& c, int64_t v) { c.batch_size = static_cast<int>(v); },
      [](const Config& c) { return c.batch_size; }));
  keys.push_back(IntKey(
      "BATCH_MAX_BYTES",
      "payload bytes after which a realtime batch takes no more messages (0 = no limit)", "4194304",
      0, 1024LL * 1024 * 1024, [](Config& c, int64_t v) { c.batch_max_bytes = v; },
      [](const Config& c) { return c.batch_max_bytes; }));
  dur_key("BATCH_MAX_WAIT", "longest wait for messages when none are pending", "100ms", ms(1),
          ms(10'000), &Config::batch_max_wait);
  dur_key("ACK_WAIT", "realtime consumer AckWait (redelivery after a crash)", "5s", ms(1000),
          kMinute * 60, &Config::ack_wait);
  keys.push_back(IntKey(
      "MAX_DELIVER", "deliveries of a realtime event before it goes to the DLQ", "20", 2, 10000,
      [](Config& c, int64_t v) { c.max_deliver = static_cast<int>(v); },
      [](const Config& c) { return c.max_deliver; }));
  keys.push_back(IntKey(
      "MAX_ACK_PENDING", "unacknowledged messages of the realtime consumer; 0 = 4 x BATCH_SIZE",
      "0", 0, 1'000'000, [](Config& c, int64_t v) { c.max_ack_pending = static_cast<int>(v); },
      [](const Config& c) { return c.max_ack_pending; }));
  dur_key("HISTORY_ACK_WAIT", "history consumer AckWait (in-progress acks extend it)", "60s",
          ms(1000), kMinute * 60, &Config::history_ack_wait);
  keys.push_back(IntKey(
      "HISTORY_MAX_DELIVER", "deliveries of a history batch before it goes to the DLQ", "10", 2,
      10000, [](Config& c, int64_t v) { c.history_max_deliver = static_cast<int>(v); },
      [](const Config& c) { return c.history_max_deliver; }));
  dur_key("NAK_BASE_DELAY", "first redelivery delay after a transient error", "500ms", ms(1),
          kMinute * 10, &Config::nak_base_delay);
  dur_key("NAK_MAX_DELAY", "cap of the redelivery delay", "30s", ms(1), kMinute * 60,
          &Config::nak_max_delay);
  dur_key("ORDERING_GRACE", "how long an update may wait for its row before it is exhausted", "6s",
          ms(0), kMinute * 60, &Config::ordering_grace);
  {
    Key k = IntKey(
        "MAX_EVENT_BYTES", "largest accepted event; larger ones are exhausted as too_large",
        "921600", 1024, 64 * 1024 * 1024, [](Config& c, int64_t v) { c.max_event_bytes = v; },
        [](const Config& c) { return c.max_event_bytes; });
    keys.push_back(std::move(k));
  }
  dur_key("SHUTDOWN_GRACE",
          "time from SIGTERM to exit: the in-flight batch is finished and acked, then NATS "
          "drained with what is left (at least 0.5 s); a process still running 2 s after it "
          "exits 1",
          "20s", ms(0), kMinute * 10, &Config::shutdown_grace);
  keys.push_back(IntKey(
      "DLQ_WORKERS", "DLQ worker pool size", "4", 1, 256,
      [](Config& c, int64_t v) { c.dlq_workers = static_cast<int>(v); },
      [](const Config& c) { return c.dlq_workers; }));
  dur_key("DLQ_BASE_DELAY", "first DLQ retry delay", "1s", ms(1), kMinute * 60,
          &Config::dlq_base_delay);
  dur_key("DLQ_MAX_DELAY", "cap of the DLQ retry delay", "5m", ms(1), kDay, &Config::dlq_max_delay);
  keys.push_back(IntKey(
      "DLQ_MAX_ATTEMPTS", "attempts of a retryable event before it is exhausted", "5", 1, 1000,
      [](Config& c, int64_t v) { c.dlq_max_attempts = static_cast<int>(v); },
      [](const Config& c) { return c.dlq_max_attempts; }));
  dur_key("DLQ_ACK_WAIT", "DLQ consumer AckWait", "30s", ms(1000), kMinute * 60,
          &Config::dlq_ack_wait);
  return keys;
}

std::string ReadSecretFile(const std::string& path, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = "cannot read file '" + path + "'";
    return "";
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return Trim(ss.str());
}

// Stable short suffix for allow-listed deployments' consumer names.
std::string TenantSuffix(const std::vector<std::string>& tenants) {
  std::vector<std::string> sorted = tenants;
  std::sort(sorted.begin(), sorted.end());
  uint64_t h = 1469598103934665603ULL;  // FNV-1a
  for (const auto& t : sorted) {
    for (unsigned char ch : t + ",") {
      h ^= ch;
      h *= 1099511628211ULL;
    }
  }
  static const char* kHex = "0123456789abcdef";
  std::string out = "-t";
  for (int i = 0; i < 8; ++i) out += kHex[(h >> (i * 4)) & 0xF];
  return out;
}

}  // namespace

Result<Config, std::vector<std::string>> Config::FromEnvironment(Binary binary,
                                                                 const Getenv& getenv) {
  Config cfg;
  std::vector<std::string> errors;
  std::vector<std::string> explicit_consumers;
  for (const Key& key : Keys(binary)) {
    std::optional<std::string> value = getenv(key.name);
    // Set but empty counts as unset (templated manifests often render empty values).
    if (value && Trim(*value).empty()) value.reset();
    if (!value) {
      // Secrets may come from a mounted file: KEY_FILE=/run/secrets/...
      if (auto file = getenv(key.name + "_FILE"); file && !file->empty()) {
        std::string err;
        value = ReadSecretFile(*file, &err);
        if (!err.empty()) {
          errors.push_back(key.name + "_FILE: " + err);
          continue;
        }
      }
    }
    if (value && key.name.ends_with("_CONSUMER")) explicit_consumers.push_back(key.name);
    std::string v = value ? Trim(*value) : key.default_value;
    if (v.empty() && key.name == "POSTGRES_DSN" && binary == Binary::kCli) continue;
    std::string err = key.apply(cfg, v);
    if (!err.empty()) {
      std::string shown = key.secret               ? "****"
                          : key.name == "NATS_URL" ? "'" + MaskNatsUrls(v) + "'"
                                                   : "'" + v + "'";
      errors.push_back(key.name + "=" + shown + ": " + err);
    }
  }
  if (cfg.nak_base_delay > cfg.nak_max_delay) {
    errors.emplace_back("NAK_BASE_DELAY must not exceed NAK_MAX_DELAY");
  }
  if (cfg.dlq_base_delay > cfg.dlq_max_delay) {
    errors.emplace_back("DLQ_BASE_DELAY must not exceed DLQ_MAX_DELAY");
  }
  // PostgreSQL refuses to create schemas named pg_*: every tenant would fail.
  for (const auto& [key, name] : {std::pair<const char*, const std::string&>{
                                      "TENANT_SCHEMA_PREFIX", cfg.tenant_schema_prefix},
                                  {"OPS_SCHEMA", cfg.ops_schema}}) {
    if (name.starts_with("pg_")) {
      errors.push_back(std::string(key) + "='" + name +
                       "': must not start with pg_ (reserved by PostgreSQL)");
    }
  }
  // The ops schema must never be some tenant's schema (prefix + a lower-cased tenant id).
  if (!cfg.tenant_schema_prefix.empty() && cfg.ops_schema.starts_with(cfg.tenant_schema_prefix) &&
      std::regex_match(cfg.ops_schema.substr(cfg.tenant_schema_prefix.size()),
                       std::regex("^[a-z][a-z0-9_]{0,39}$"))) {
    errors.push_back("OPS_SCHEMA='" + cfg.ops_schema + "' is the schema tenant '" +
                     cfg.ops_schema.substr(cfg.tenant_schema_prefix.size()) +
                     "' would get with TENANT_SCHEMA_PREFIX='" + cfg.tenant_schema_prefix +
                     "'; choose names that cannot meet");
  }
  // Two streams of one name would be one stream with the subjects of both.
  const std::pair<const char*, const std::string*> streams[] = {
      {"REALTIME_STREAM", &cfg.realtime_stream},
      {"HISTORY_STREAM", &cfg.history_stream},
      {"DLQ_STREAM", &cfg.dlq_stream},
      {"ADVISORY_STREAM", &cfg.advisory_stream}};
  for (size_t i = 0; i < std::size(streams); ++i) {
    for (size_t j = i + 1; j < std::size(streams); ++j) {
      if (*streams[i].second == *streams[j].second) {
        errors.push_back(std::string(streams[i].first) + " and " + streams[j].first +
                         " are both '" + *streams[i].second + "': each stream needs its own name");
      }
    }
  }
  if (cfg.max_ack_pending == 0) cfg.max_ack_pending = 4 * cfg.batch_size;
  if (cfg.max_ack_pending < cfg.batch_size) {
    errors.push_back("MAX_ACK_PENDING (" + std::to_string(cfg.max_ack_pending) +
                     ") must be at least BATCH_SIZE (" + std::to_string(cfg.batch_size) + ")");
  }
  if (!cfg.tenants.empty()) {
    const std::string suffix = TenantSuffix(cfg.tenants);
    auto suffixed = [&](const char* key, std::string& name) {
      if (std::find(explicit_consumers.begin(), explicit_consumers.end(), key) ==
          explicit_consumers.end()) {
        name += suffix;
      }
    };
    suffixed("REALTIME_CONSUMER", cfg.realtime_consumer);
    suffixed("HISTORY_CONSUMER", cfg.history_consumer);
    suffixed("DLQ_CONSUMER", cfg.dlq_consumer);
  }
  if (!errors.empty()) return Err{std::move(errors)};
  return cfg;
}

Result<Config, std::vector<std::string>> Config::FromProcessEnvironment(Binary binary) {
  return FromEnvironment(binary, [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  });
}

namespace {

// Levenshtein distance, ASCII case folded.
size_t EditDistance(std::string_view a, std::string_view b) {
  auto fold = [](char c) { return static_cast<char>(std::toupper(static_cast<unsigned char>(c))); };
  std::vector<size_t> prev(b.size() + 1);
  std::vector<size_t> cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t subst = prev[j - 1] + (fold(a[i - 1]) == fold(b[j - 1]) ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, subst});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

std::vector<std::pair<std::string, std::string>> Config::NearMisses(
    const std::vector<std::string>& names) {
  std::set<std::string> settings;
  for (Binary b : {Binary::kProcessor, Binary::kDlqWorker, Binary::kCli}) {
    for (const Key& key : Keys(b)) settings.insert(key.name);
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string& name : names) {
    if (settings.count(name) || name.size() < 4) continue;
    // One edit in a short name, two in a longer one: far enough for typos, near enough
    // that unrelated variables (PATH, HOSTNAME, NATS_PORT from a Kubernetes service) pass.
    const size_t limit = name.size() < 9 ? 1 : 2;
    const std::string* best = nullptr;
    size_t best_distance = limit + 1;
    for (const std::string& setting : settings) {
      const size_t d = EditDistance(name, setting);
      if (d < best_distance) {
        best_distance = d;
        best = &setting;
      }
    }
    if (best != nullptr) out.emplace_back(name, *best);
  }
  return out;
}

bool Config::AllowsTenant(const std::string& company_id) const {
  return tenants.empty() || std::find(tenants.begin(), tenants.end(), company_id) != tenants.end();
}

std::vector<std::string> Config::Describe() const {
  std::vector<std::string> out;
  for (const Key& key : Keys(Binary::kProcessor)) {
    std::string v = key.show(*this);
    if (key.name == "POSTGRES_DSN" || key.name == "NATS_URL") {
      // Both may carry credentials (nats://user:pass@host or nats://token@host, one or more
      // URLs; postgresql://user:pass@host or password=...).
      v = key.name == "NATS_URL" ? MaskNatsUrls(v) : MaskDsn(v);
    } else if (key.secret && !v.empty()) {
      v = "****";
    }
    out.push_back(key.name + "=" + v + "  # " + key.doc);
  }
  return out;
}

std::string MaskDsn(const std::string& dsn) {
  if (dsn.starts_with("postgresql://") || dsn.starts_with("postgres://")) {
    // URI form: scheme://user:password@host/db?password=...&sslpassword=...&other=...
    static const std::regex kUserinfo(R"(^([a-z]+://[^:/@?#]*):([^@/?#]*)@)");
    std::string out = std::regex_replace(dsn, kUserinfo, "$1:****@");
    static const std::regex kQuery(R"(([?&](?:ssl)?password=)[^&#]*)");
    return std::regex_replace(out, kQuery, "$1****");
  }
  // key=value form (libpq; the pattern also masks sslpassword): a value is quoted ('...', where \'
  // and \\ are escapes) or runs to the next blank (a backslash escapes the next character there
  // too).
  static const std::regex kKv(R"((password\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:\\.|[^\s\\])+))");
  return std::regex_replace(dsn, kKv, "$1****");
}

std::string NatsUrlsError(const std::string& urls) {
  const std::vector<std::string> parts = SplitList(urls);
  if (parts.empty()) return "must name at least one server (nats://host:4222)";
  for (const auto& part : parts) {
    const std::string shown = "'" + MaskNatsUrls(part) + "'";
    const size_t scheme = part.find("://");
    const std::string name = scheme == std::string::npos ? "" : part.substr(0, scheme);
    if (name != "nats" && name != "tls") return shown + " must start with nats:// or tls://";
    // As nats.c reads a URL: the user info ends at the last '@' (a password may hold '/').
    size_t start = scheme + 3;
    if (const size_t at = part.rfind('@'); at != std::string::npos && at >= start) start = at + 1;
    const size_t end = std::min(part.find_first_of("/?#", start), part.size());
    std::string host = part.substr(start, end - start);
    std::string port;
    if (host.starts_with("[")) {  // [IPv6]:port
      const size_t close = host.find(']');
      if (close == std::string::npos) return shown + ": unclosed '[' in the host";
      if (close + 1 < host.size()) {
        if (host[close + 1] != ':') return shown + ": expected ':port' after the IPv6 address";
        port = host.substr(close + 2);
        if (port.empty()) return shown + ": empty port";
      }
      host = host.substr(0, close + 1);
    } else if (const size_t colon = host.rfind(':'); colon != std::string::npos) {
      port = host.substr(colon + 1);
      host.erase(colon);
      if (port.empty()) return shown + ": empty port";
    }
    if (host.empty() || host == "[]") return shown + ": no host";
    if (!port.empty()) {
      int n = 0;
      auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), n);
      if (ec != std::errc() || p != port.data() + port.size() || n < 1 || n > 65535) {
        return shown + ": port '" + port + "' is not a number from 1 to 65535";
      }
    }
  }
  return "";
}

std::string MaskNatsUrls(const std::string& urls) {
  // nats://user:password@host keeps the user; nats://token@host hides the whole token. The
  // credentials end at the authority's last '@' (a password may contain '@').
  std::string out;
  for (const auto& part : SplitList(urls)) {
    std::string masked = part;
    const size_t scheme = part.find("://");
    if (scheme != std::string::npos) {
      const size_t start = scheme + 3;
      const size_t authority_end = std::min(part.find('/', start), part.size());
      const size_t at = part.rfind('@', authority_end == 0 ? 0 : authority_end - 1);
      if (at != std::string::npos && at >= start) {
        const std::string userinfo = part.substr(start, at - start);
        const size_t colon = userinfo.find(':');
        masked = part.substr(0, start) +
                 (colon != std::string::npos ? userinfo.substr(0, colon) + ":****" : "****") +
                 part.substr(at);
      }
    }
    out += (out.empty() ? "" : ",") + masked;
  }
  return out;
}

}  // namespace evp
