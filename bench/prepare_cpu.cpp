// evp_bench_prepare_cpu: the processor's own CPU per event, without servers.
//
// Builds EVENTS standard-mix events (the payloads of `eventctl load --mix standard`) over
// TENANTS tenants, then times, in batches of BATCH events, what the processor does with a
// fetched batch before and after the database: BatchProcessor::Prepare (subject routing,
// JSON decoding, schema validation, mutations) and SetWriter::Plan (the statements and
// their parameters). Prints the median of ROUNDS rounds in microseconds per event.
//
//   evp_bench_prepare_cpu [--events N] [--tenants N] [--batch N] [--rounds N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "handlers/samples.hpp"
#include "observability/metrics.hpp"
#include "pipeline/batch_processor.hpp"
#include "postgres/set_writer.hpp"
#include "routing/subject.hpp"
#include "validation/schema_registry.hpp"

namespace {

using namespace evp;

// Ports Prepare does not reach for valid events: they only have to exist.
class NoStore final : public pipeline::EventStore, public pipeline::ExhaustedStore {
 public:
  Result<Unit, pipeline::StoreError> EnsureTenant(const std::string&) override { return Unit{}; }
  Result<std::vector<pipeline::ApplyResult>, pipeline::StoreError> Apply(
      std::vector<handlers::Mutation> m) override {
    return std::vector<pipeline::ApplyResult>(m.size());
  }
  bool Ping() override { return true; }
  Result<bool, pipeline::StoreError> RecordExhausted(const DeadLetter&,
                                                     const std::string&) override {
    return true;
  }
  Result<bool, pipeline::StoreError> IsRecorded(const std::string&) override { return false; }
};
class NoSink final : public pipeline::DeadLetterSink {
 public:
  Result<Unit, std::string> Publish(const DeadLetter&) override { return Unit{}; }
  size_t MaxPayload() const override { return 1 << 20; }
};

struct Options {
  int events = 100'000;
  int tenants = 50;
  int batch = 1000;
  int rounds = 5;
};

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const int value = std::atoi(argv[i + 1]);
    if (value <= 0) {
      std::fprintf(stderr, "%s needs a positive number\n", flag.c_str());
      std::exit(2);
    }
    if (flag == "--events") {
      o.events = value;
    } else if (flag == "--tenants") {
      o.tenants = value;
    } else if (flag == "--batch") {
      o.batch = value;
    } else if (flag == "--rounds") {
      o.rounds = value;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      std::exit(2);
    }
  }
  return o;
}

// The standard mix: 60 % messages.upsert, 20 % messages.update, 10 % chats.upsert,
// 10 % contacts.upsert; updates name earlier messages of their tenant.
std::vector<pipeline::InboundMessage> StandardMix(const Options& o) {
  std::mt19937_64 rng(42);
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  std::vector<pipeline::InboundMessage> out;
  std::vector<std::vector<uint64_t>> known(static_cast<size_t>(o.tenants));
  for (int n = 0; n < o.events; ++n) {
    const auto t = static_cast<size_t>(rng() % static_cast<uint64_t>(o.tenants));
    char tenant[32];
    std::snprintf(tenant, sizeof tenant, "bench_t%04zu", t);
    const uint64_t pick = rng() % 10;
    EventType type = pick < 6   ? EventType::kMessagesUpsert
                     : pick < 8 ? EventType::kMessagesUpdate
                     : pick < 9 ? EventType::kChatsUpsert
                                : EventType::kContactsUpsert;
    if (type == EventType::kMessagesUpdate && known[t].empty()) type = EventType::kMessagesUpsert;
    auto seed = static_cast<uint64_t>(n);
    if (type == EventType::kMessagesUpdate) seed = known[t][rng() % known[t].size()];
    if (type == EventType::kMessagesUpsert) known[t].push_back(seed);
    nlohmann::json body = handlers::SamplePayload(type, tenant, {seed, now, 0});
    if (type == EventType::kMessagesUpdate) body.erase("timestamp");
    pipeline::InboundMessage m;
    m.subject = routing::SubjectFor(type, tenant);
    m.data = body.dump();
    m.stream = "EVENTS_REALTIME";
    m.stream_seq = static_cast<uint64_t>(n) + 1;
    m.msg_id = "bench-" + std::to_string(n);
    m.delivered = 1;
    m.publish_time_ns = now * 1'000'000'000;
    out.push_back(std::move(m));
  }
  return out;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Run(int argc, char** argv) {
  const Options o = ParseArgs(argc, argv);
  auto cfg = Config::FromEnvironment(Binary::kProcessor,
                                     [](const std::string& k) -> std::optional<std::string> {
                                       if (k == "POSTGRES_DSN") return "postgresql://bench@x/db";
                                       return std::nullopt;
                                     });
  if (!cfg.ok()) {
    std::fprintf(stderr, "configuration: %s\n", cfg.error().front().c_str());
    return 1;
  }
  auto schemas = validation::SchemaRegistry::LoadEmbedded();
  if (!schemas.ok()) {
    std::fprintf(stderr, "schemas: %s\n", schemas.error().c_str());
    return 1;
  }
  NoStore store;
  NoSink sink;
  pipeline::SystemClock clock;
  observability::Metrics metrics("bench", {});
  pipeline::BatchProcessor processor(cfg.value(), schemas.value(), store, sink, store, clock,
                                     metrics);
  postgres::SetWriter planner("tenant_", "events_ops");
  const auto events = StandardMix(o);

  std::vector<double> prepare_us;
  std::vector<double> plan_us;
  size_t mutations = 0;
  size_t bytes = 0;
  for (int r = 0; r < o.rounds; ++r) {
    std::chrono::duration<double, std::micro> prepare{0};
    std::chrono::duration<double, std::micro> plan{0};
    mutations = 0;
    bytes = 0;
    for (size_t start = 0; start < events.size(); start += static_cast<size_t>(o.batch)) {
      const size_t n = std::min(events.size() - start, static_cast<size_t>(o.batch));
      const std::span<const pipeline::InboundMessage> batch(events.data() + start, n);
      auto t0 = std::chrono::steady_clock::now();
      auto prepared = processor.Prepare(batch);
      auto t1 = std::chrono::steady_clock::now();
      std::vector<pipeline::ApplyResult> results;
      const auto steps = planner.Plan(prepared->mutations, results);
      auto t2 = std::chrono::steady_clock::now();
      prepare += t1 - t0;
      plan += t2 - t1;
      mutations += prepared->mutations.size();
      for (const auto& s : steps) {
        for (const auto& p : s.params) bytes += p.size();
      }
    }
    prepare_us.push_back(prepare.count() / static_cast<double>(events.size()));
    plan_us.push_back(plan.count() / static_cast<double>(events.size()));
  }
  std::printf(
      "prepare_cpu: events=%d tenants=%d batch=%d rounds=%d mutations=%zu param_bytes=%zu\n"
      "prepare_cpu: prepare_us_per_event=%.2f plan_us_per_event=%.2f total_us_per_event=%.2f "
      "(medians)\n",
      o.events, o.tenants, o.batch, o.rounds, mutations, bytes, Median(prepare_us), Median(plan_us),
      Median(prepare_us) + Median(plan_us));
  return mutations == events.size() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "evp_bench_prepare_cpu: %s\n", e.what());
    return 1;
  }
}
