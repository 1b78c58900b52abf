// eventctl: operator and developer CLI. Wiring of subcommands; logic in internal/.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>

#include "app/startup.hpp"
#include "exhausted.hpp"
#include "handlers/samples.hpp"
#include "load.hpp"
#include "observability/logging.hpp"
#include "postgres/pg_store.hpp"
#include "routing/subject.hpp"

using namespace evp;

namespace {

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

int64_t NowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string RandomId() {
  std::random_device rd;
  std::mt19937_64 rng(rd());
  char buf[33];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng()));
  return buf;
}

std::string TypeNames() {
  std::string out;
  for (EventType t : kAllEventTypes) {
    if (!out.empty()) out += ", ";
    out += EventTypeName(t);
  }
  return out;
}

int Publish(const Config& config, const std::string& type_name, const std::string& tenant,
            const std::string& file, const std::string& subject_override, const std::string& msg_id,
            int count, uint64_t seed, int history_items) {
  std::string subject = subject_override;
  std::optional<EventType> type;
  if (subject.empty()) {
    type = EventTypeFromName(type_name);
    if (!type) {
      std::fprintf(stderr, "unknown --type '%s'; one of: %s\n", type_name.c_str(),
                   TypeNames().c_str());
      return 2;
    }
    subject = routing::SubjectFor(*type, tenant);
  }
  // NATS would drop the connection on a subject with spaces, and a wildcard is no subject.
  if (subject.empty() || subject.front() == '.' || subject.back() == '.' ||
      subject.find("..") != std::string::npos ||
      subject.find_first_of(" \t\r\n*>") != std::string::npos) {
    std::fprintf(stderr,
                 "'%s' is not a subject one can publish to (empty token, space or wildcard)\n",
                 subject.c_str());
    return 2;
  }
  std::string body;
  if (!file.empty()) {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "cannot read %s\n", file.c_str());
      return 2;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    body = ss.str();
  } else if (!type) {
    std::fprintf(stderr, "--subject needs --file (or use --type for a built-in sample)\n");
    return 2;
  }
  auto conn = nats::NatsConnection::Connect(config, "eventctl");
  if (!conn.ok()) {
    std::fprintf(stderr, "%s\n", conn.error().c_str());
    return 1;
  }
  for (int i = 0; i < count; ++i) {
    std::string payload = body;  // a file's exact bytes, an empty file included
    if (file.empty()) {
      handlers::SampleOptions opts{seed + static_cast<uint64_t>(i), NowUnix(), history_items};
      payload = handlers::SamplePayload(*type, tenant, opts).dump();
    }
    const std::string id =
        msg_id.empty() ? RandomId() : (count > 1 ? msg_id + "-" + std::to_string(i) : msg_id);
    if (static_cast<int64_t>(payload.size()) > config.max_event_bytes) {
      std::fprintf(stderr,
                   "note: %zu bytes is above MAX_EVENT_BYTES (%lld): the processor records it "
                   "as too_large\n",
                   payload.size(), static_cast<long long>(config.max_event_bytes));
    }
    auto seq = (*conn)->Publish(subject, payload, id, {});
    if (!seq.ok()) {
      std::fprintf(stderr, "%s\n", seq.error().c_str());
      return 1;
    }
    std::printf("published %s (%zu bytes) msg-id=%s stream-seq=%llu\n", subject.c_str(),
                payload.size(), id.c_str(), static_cast<unsigned long long>(seq.value()));
  }
  return 0;
}

int Run(int argc, char** argv) {
  CLI::App cli{
      "eventctl: operate the events processor (publish, load, migrate, exhausted, config)"};
  cli.require_subcommand(1);

  std::string type_name = "messages.upsert";
  std::string tenant = "acme";
  std::string file;
  std::string subject;
  std::string msg_id;
  int count = 1;
  auto seed = static_cast<uint64_t>(NowUnix());
  int history_items = 3;
  auto* publish = cli.add_subcommand("publish", "publish a JSON file or a built-in sample event");
  publish->add_option("-t,--type", type_name, "event type: " + TypeNames())->capture_default_str();
  publish->add_option("-c,--tenant", tenant, "company_id (last subject token)")
      ->capture_default_str();
  auto* subject_opt =
      publish->add_option("-s,--subject", subject, "publish to this exact subject (with --file)");
  publish
      ->add_option("-f,--file", file,
                   "publish this file's exact bytes instead of a sample (needs --subject)")
      ->needs(subject_opt);
  subject_opt->needs("--file");
  publish->add_option("--msg-id", msg_id, "Nats-Msg-Id (default: random)");
  publish->add_option("-n,--count", count, "how many events (samples vary by seed)")
      ->check(CLI::Range(1, 1'000'000));
  publish->add_option("--seed", seed,
                      "sample seed: ids and texts derive from it, so the same seed targets the "
                      "same chat/message/contact (default: the current unix time)");
  publish->add_option("--history-items", history_items, "items per history sample")
      ->check(CLI::Range(0, 100'000));

  auto* migrate = cli.add_subcommand("migrate", "apply database migrations (ops schema)");
  std::vector<std::string> migrate_tenants;
  migrate->add_option("--tenant", migrate_tenants, "also create/upgrade these tenants' schemas");

  auto* config_cmd =
      cli.add_subcommand("config", "print the effective configuration (secrets masked)");

  auto run_exhausted = eventctl::AddExhaustedCommands(cli);
  auto run_load = eventctl::AddLoadCommand(cli);

  if (argc > 1 && argv[1][0] != '-') {
    // CLI11 would only say "A subcommand is required".
    bool known = false;
    std::string names;
    for (const CLI::App* sub : cli.get_subcommands({})) {
      known = known || sub->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::fprintf(stderr, "unknown command '%s'; one of: %s (see --help)\n", argv[1],
                   names.c_str());
      return 2;
    }
  }
  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Usage errors exit 2, like configuration errors (CLI11's own codes are 100+).
    return cli.exit(e) == 0 ? 0 : 2;
  }

  const Config config = app::LoadConfigOrExit(Binary::kCli, "eventctl");
  observability::InitLogging("eventctl", "warn", "text");
  app::WarnAboutMisspeltSettings();

  if (*config_cmd) {
    for (const auto& line : config.Describe()) std::printf("%s\n", line.c_str());
    return 0;
  }
  if (*publish) {
    return Publish(config, type_name, tenant, file, subject, msg_id, count, seed, history_items);
  }
  if (cli.got_subcommand("exhausted")) return run_exhausted(config);
  if (cli.got_subcommand("load")) return run_load(config);
  if (*migrate) {
    if (config.postgres_dsn.empty()) {
      std::fprintf(stderr, "POSTGRES_DSN is required for migrate\n");
      return 2;
    }
    auto r = postgres::MigrateOps(config.postgres_dsn, config.ops_schema);
    if (!r.ok()) {
      std::fprintf(stderr, "%s\n", r.error().c_str());
      return 1;
    }
    std::printf("schema %s is up to date (%d migration(s) applied now)\n",
                config.ops_schema.c_str(), r.value());
    postgres::PgStore store(config.postgres_dsn, config.ops_schema, config.tenant_schema_prefix);
    for (const auto& t : migrate_tenants) {
      if (auto err = routing::TenantIdError(t)) {
        std::fprintf(stderr, "%s\n", err->c_str());
        return 2;
      }
      auto e = store.EnsureTenant(t);
      if (!e.ok()) {
        std::fprintf(stderr, "tenant %s: %s\n", t.c_str(), e.error().message.c_str());
        return 1;
      }
      // A version says what ran, not what is there still: a table dropped by hand since
      // would fail every event of its type.
      const std::string schema = postgres::TenantSchemaName(config.tenant_schema_prefix, t);
      auto repair = postgres::RepairTenantTables(config.postgres_dsn, schema);
      if (!repair.ok()) {
        std::fprintf(stderr, "tenant %s: %s\n", t.c_str(), repair.error().c_str());
        return 1;
      }
      if (!repair->recreated_tables.empty()) {
        std::printf(
            "schema %s: recreated missing table(s) %s, empty; redrive the events that failed "
            "meanwhile (eventctl exhausted redrive --tenant %s --reason retries_exhausted)\n",
            schema.c_str(), Join(repair->recreated_tables).c_str(), t.c_str());
      }
      if (!repair->missing_columns.empty()) {
        std::fprintf(stderr,
                     "schema %s: column(s) missing, not recreated: %s; add them back as "
                     "migrations/tenant/ defines them\n",
                     schema.c_str(), Join(repair->missing_columns).c_str());
        return 1;
      }
      std::printf("schema %s is up to date\n", schema.c_str());
    }
    return 0;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    // The commands report the errors they expect; this is for the ones they do not.
    std::fprintf(stderr, "eventctl: %s\n", e.what());
    return 1;
  }
}
