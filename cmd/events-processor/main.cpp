// events-processor: JetStream durable pull consumers (realtime and history) -> validation ->
// handlers -> tenant tables in PostgreSQL -> ack. Wiring only; the logic lives in internal/.
#include <atomic>
#include <thread>

#include "app/startup.hpp"
#include "core/signals.hpp"
#include "observability/http_server.hpp"
#include "observability/logging.hpp"
#include "pipeline/consumer_loop.hpp"
#include "postgres/pg_store.hpp"
#include "validation/schema_registry.hpp"

using namespace evp;

int main() {
  std::atomic<bool> stop{false};
  const Config config = app::StartService(Binary::kProcessor, "events-processor", stop);
  pipeline::LoopHealth realtime_health;
  pipeline::LoopHealth history_health;
  app::DatabaseProbe db_probe(config, std::chrono::milliseconds(1000));  // after what it watches
  db_probe.Watch(realtime_health);
  db_probe.Watch(history_health);

  auto schemas = validation::SchemaRegistry::LoadEmbedded();
  if (!schemas.ok()) {
    observability::LogError("cannot load JSON schemas", {{"error", schemas.error()}});
    return 1;
  }
  observability::Metrics metrics("events-processor", config.metrics_tenants);
  std::atomic<bool> consumers_bound{false};
  std::shared_ptr<nats::NatsConnection> conn;
  std::atomic<std::shared_ptr<nats::NatsConnection>> nats_conn;  // what /readyz reads

  observability::HttpServer http(metrics, [&] {
    const std::shared_ptr<nats::NatsConnection> live = nats_conn.load();
    const bool nats_up = live != nullptr && live->Connected();
    const bool pg = db_probe.ok() && realtime_health.store_ok && history_health.store_ok;
    // Bound, and the last fetch of each loop worked (false while a deleted consumer is
    // recreated).
    const bool bound = consumers_bound && realtime_health.running && history_health.running &&
                       realtime_health.source_ok && history_health.source_ok;
    return app::ReadinessOf(nats_up, pg, bound, stop);
  });
  if (!app::StartHttp(http, config.http_port)) return 1;

  // NATS first: while PostgreSQL is not reachable yet, /readyz tells which of the two is up.
  conn = app::ConnectNatsWhenReachable(config, "events-processor", stop, nats_conn);
  if (!conn) return 0;
  if (!app::MigrateOpsWhenReachable(config, stop)) return 0;

  const nats::ConsumerSpec realtime_spec{config.realtime_stream, config.realtime_consumer,
                                         config.ack_wait,        config.max_deliver,
                                         config.max_ack_pending, ""};
  const nats::ConsumerSpec history_spec{config.history_stream,
                                        config.history_consumer,
                                        config.history_ack_wait,
                                        config.history_max_deliver,
                                        std::max(16, config.max_ack_pending / 64),
                                        ""};
  auto realtime_src = app::BindWhenReady(config, conn, realtime_spec, stop);
  auto history_src = app::BindWhenReady(config, conn, history_spec, stop);
  if (!realtime_src || !history_src) return 0;
  realtime_src->SetBatchByteBudget(static_cast<size_t>(config.batch_max_bytes));
  consumers_bound = true;
  observability::LogInfo("consuming", {{"realtime_consumer", config.realtime_consumer},
                                       {"history_consumer", config.history_consumer},
                                       {"batch_size", config.batch_size}});

  std::thread realtime([&] {
    postgres::PgWriterPool store(config, config.db_pool_size);
    nats::JetStreamDeadLetterSink dlq(conn);
    pipeline::SystemClock clock;
    pipeline::BatchProcessor processor(config, schemas.value(), store, dlq, store, clock, metrics);
    pipeline::RunPipelinedLoop(*realtime_src, processor, store, metrics,
                               {config.realtime_consumer, config.batch_size, config.batch_max_wait,
                                config.ack_wait / 3, std::chrono::milliseconds(5000),
                                /*fetch_ahead=*/true},
                               stop, realtime_health);
  });
  std::thread history([&] {
    // A history event carries thousands of items: one per fetch. Its decoded items take about
    // ten times its bytes, so fetching four at once doubled the peak memory (100 MB against
    // 57-60 MB for 5,000-item events) and was no faster (bench/run.sh, history phase).
    // Validating event N+1 while N is written took 5,000-item imports from 13.6-17.0k to
    // 19.9-25.6k items/s, for a peak of 74 MB.
    postgres::PgStore store(config.postgres_dsn, config.ops_schema, config.tenant_schema_prefix,
                            static_cast<size_t>(config.db_statement_cache), config.db_lock_timeout);
    nats::JetStreamDeadLetterSink dlq(conn);
    pipeline::SystemClock clock;
    Config history_config = config;
    history_config.max_deliver = config.history_max_deliver;
    pipeline::BatchProcessor processor(history_config, schemas.value(), store, dlq, store, clock,
                                       metrics);
    pipeline::RunPipelinedLoop(*history_src, processor, store, metrics,
                               {config.history_consumer, 1, config.batch_max_wait,
                                config.history_ack_wait / 3, std::chrono::milliseconds(5000)},
                               stop, history_health);
  });
  realtime.join();
  history.join();
  observability::LogInfo("in-flight batches settled; draining NATS");
  realtime_src.reset();
  history_src.reset();
  conn->Drain(GraceLeft(config.shutdown_grace));  // what the in-flight batch left
  http.Stop();
  observability::LogInfo("stopped");
  return 0;
}
