// dlq-worker: a pool of workers on the DLQ stream's durable pull consumer. Records every
// dead letter's outcome durably in <OPS_SCHEMA>.exhausted_events before acknowledging it.
#include <atomic>
#include <thread>
#include <vector>

#include "app/startup.hpp"
#include "core/signals.hpp"
#include "dlq/advisory_handler.hpp"
#include "dlq/dlq_handler.hpp"
#include "observability/http_server.hpp"
#include "observability/logging.hpp"
#include "pipeline/consumer_loop.hpp"
#include "postgres/pg_store.hpp"
#include "validation/schema_registry.hpp"

using namespace evp;

int main() {
  std::atomic<bool> stop{false};
  const Config config = app::StartService(Binary::kDlqWorker, "dlq-worker", stop);
  std::vector<std::unique_ptr<pipeline::LoopHealth>> health;
  health.reserve(static_cast<size_t>(config.dlq_workers));
  for (int i = 0; i < config.dlq_workers; ++i) {
    health.push_back(std::make_unique<pipeline::LoopHealth>());
  }
  pipeline::LoopHealth advisory_health;
  app::DatabaseProbe db_probe(config, std::chrono::milliseconds(1000));  // after what it watches
  for (auto& h : health) db_probe.Watch(*h);
  db_probe.Watch(advisory_health);

  auto schemas = validation::SchemaRegistry::LoadEmbedded();
  if (!schemas.ok()) {
    observability::LogError("cannot load JSON schemas", {{"error", schemas.error()}});
    return 1;
  }
  observability::Metrics metrics("dlq-worker", config.metrics_tenants);
  std::shared_ptr<nats::NatsConnection> conn;
  std::atomic<std::shared_ptr<nats::NatsConnection>> nats_conn;  // what /readyz reads
  std::atomic<bool> started{false};

  observability::HttpServer http(metrics, [&] {
    const std::shared_ptr<nats::NatsConnection> live = nats_conn.load();
    const bool nats_up = live != nullptr && live->Connected();
    // The database's own state, also before the consumers are bound (NATS may be what is
    // missing then).
    bool pg = db_probe.ok();
    bool running = started.load();
    for (const auto& h : health) {
      pg = pg && h->store_ok;
      running = running && h->running && h->source_ok;  // false while a consumer is recreated
    }
    return app::ReadinessOf(nats_up, pg, running, stop);
  });
  if (!app::StartHttp(http, config.http_port)) return 1;

  // NATS first: while PostgreSQL is not reachable yet, /readyz tells which of the two is up.
  conn = app::ConnectNatsWhenReachable(config, "dlq-worker", stop, nats_conn);
  if (!conn) return 0;
  if (!app::MigrateOpsWhenReachable(config, stop)) return 0;
  const nats::ConsumerSpec spec{config.dlq_stream, config.dlq_consumer, config.dlq_ack_wait,
                                -1,  // never drop a dead letter: it is retried until recorded
                                // Letters waiting for their retry time stay unacknowledged
                                // (delayed NAK): leave room for a burst of them.
                                std::max(config.dlq_workers * 64, 10'000), ""};
  std::vector<std::unique_ptr<nats::JetStreamSource>> sources;
  for (int i = 0; i < config.dlq_workers; ++i) {
    auto src = app::BindWhenReady(config, conn, spec, stop);
    if (!src) return 0;
    sources.push_back(std::move(src));
  }
  // One more loop turns MAX_DELIVERIES advisories into dead letters.
  const nats::ConsumerSpec advisory_spec{
      config.advisory_stream, config.dlq_consumer + "-advisories", config.dlq_ack_wait, -1, 64, ""};
  auto advisory_src = app::BindWhenReady(config, conn, advisory_spec, stop);
  if (!advisory_src) return 0;
  std::thread advisories([&] {
    postgres::PgStore store(config.postgres_dsn, config.ops_schema, config.tenant_schema_prefix,
                            static_cast<size_t>(config.db_statement_cache), config.db_lock_timeout);
    pipeline::SystemClock clock;
    nats::JetStreamDeadLetterSink sink(conn);
    nats::JetStreamMessageStore messages(conn);
    dlq::AdvisoryHandler handler(config, messages, sink, store, clock, metrics);
    pipeline::RunConsumerLoop(*advisory_src, handler, store, metrics,
                              // Pulls of 500 ms: a stop waits for the last one to expire.
                              {advisory_spec.durable, 16, std::chrono::milliseconds(500),
                               config.dlq_ack_wait / 3, std::chrono::milliseconds(5000)},
                              stop, advisory_health);
  });
  observability::LogInfo("consuming",
                         {{"consumer", config.dlq_consumer}, {"workers", config.dlq_workers}});
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(config.dlq_workers));
  for (int i = 0; i < config.dlq_workers; ++i) {
    workers.emplace_back([&, i] {
      postgres::PgStore store(config.postgres_dsn, config.ops_schema, config.tenant_schema_prefix,
                              static_cast<size_t>(config.db_statement_cache),
                              config.db_lock_timeout);
      pipeline::SystemClock clock;
      nats::JetStreamDeadLetterSink sink(conn);
      dlq::DlqHandler handler(config, schemas.value(), store, store, sink, clock, metrics);
      pipeline::RunConsumerLoop(*sources[static_cast<size_t>(i)], handler, store, metrics,
                                // In-progress acks while a batch is handled: a retry that
                                // waits (a lock, a slow database) keeps its letters, rather
                                // than having them redelivered to the other workers.
                                {config.dlq_consumer, 32, std::chrono::milliseconds(500),
                                 config.dlq_ack_wait / 3, std::chrono::milliseconds(5000)},
                                stop, *health[static_cast<size_t>(i)]);
    });
  }
  started = true;
  for (auto& w : workers) w.join();
  advisories.join();
  advisory_src.reset();
  sources.clear();
  conn->Drain(GraceLeft(config.shutdown_grace));  // what the in-flight batch left
  http.Stop();
  observability::LogInfo("stopped");
  return 0;
}
