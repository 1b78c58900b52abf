// Configuration from the environment (SPEC §8, §10, §11): defaults, parsing, validation,
// secrets from files and masking.
#include "config/config.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace evp {
namespace {

using std::chrono::milliseconds;
using Env = std::map<std::string, std::string>;

Config::Getenv FromMap(const Env& env) {
  return [env](const std::string& key) -> std::optional<std::string> {
    auto it = env.find(key);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
}

const Env kMinimal = {{"POSTGRES_DSN", "postgresql://app:s3cret@db:5432/events"}};

Env With(Env env, const Env& extra) {
  for (const auto& [k, v] : extra) env[k] = v;
  return env;
}

Config Load(const Env& env, Binary binary = Binary::kProcessor) {
  auto r = Config::FromEnvironment(binary, FromMap(env));
  if (!r.ok()) {
    std::string all;
    for (const auto& e : r.error()) all += e + "\n";
    ADD_FAILURE() << "unexpected config errors:\n" << all;
    return Config{};
  }
  return std::move(r).value();
}

std::vector<std::string> Errors(const Env& env, Binary binary = Binary::kProcessor) {
  auto r = Config::FromEnvironment(binary, FromMap(env));
  if (r.ok()) return {};
  return r.error();
}

// True when some error line names `key` (at its start, as "KEY=..." or "KEY: ...").
bool HasErrorFor(const std::vector<std::string>& errors, const std::string& key) {
  return std::any_of(errors.begin(), errors.end(), [&](const std::string& e) {
    return e.rfind(key + "=", 0) == 0 || e.rfind(key + ":", 0) == 0 || e.rfind(key + " ", 0) == 0;
  });
}

std::string Joined(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

std::string DescribeLine(const Config& cfg, const std::string& key) {
  for (const auto& line : cfg.Describe()) {
    if (line.rfind(key + "=", 0) == 0) return line;
  }
  ADD_FAILURE() << "no Describe() line for " << key;
  return "";
}

TEST(Config, UsesTheDocumentedDefaults) {
  Config c = Load(kMinimal);
  EXPECT_EQ(c.nats_url, "nats://127.0.0.1:4222");
  EXPECT_EQ(c.http_port, 8080);
  EXPECT_EQ(c.tenant_schema_prefix, "tenant_");
  EXPECT_EQ(c.ops_schema, "events_ops");
  EXPECT_TRUE(c.tenants.empty());
  EXPECT_EQ(c.log_level, "info");
  EXPECT_EQ(c.log_format, "json");
  EXPECT_EQ(c.ordering_grace, milliseconds(6000));
  EXPECT_EQ(c.max_event_bytes, 921600);
  EXPECT_EQ(c.postgres_dsn, "postgresql://app:s3cret@db:5432/events");
}

TEST(Config, DefaultsTheDlqWorkerHttpPortTo8081) {
  EXPECT_EQ(Load(kMinimal, Binary::kDlqWorker).http_port, 8081);
  EXPECT_EQ(Load(kMinimal, Binary::kProcessor).http_port, 8080);
}

TEST(Config, DefaultMaxEventBytesLeavesRoomForDlqMetadataInOneMebibyte) {
  Config c = Load(kMinimal);
  EXPECT_EQ(c.max_event_bytes, 900 * 1024);
  EXPECT_LT(c.max_event_bytes + 64 * 1024, 1024 * 1024);
}

TEST(Config, KeepsOrderingGraceLongerThanAckWaitByDefault) {
  Config c = Load(kMinimal);
  EXPECT_GT(c.ordering_grace, c.ack_wait);
  EXPECT_GE(c.max_deliver, 5) << "several crashes must not exhaust an event";
}

TEST(Config, DefaultBackoffBoundsAreOrdered) {
  Config c = Load(kMinimal);
  EXPECT_GT(c.nak_base_delay, milliseconds(0));
  EXPECT_LE(c.nak_base_delay, c.nak_max_delay);
  EXPECT_GT(c.dlq_base_delay, milliseconds(0));
  EXPECT_LE(c.dlq_base_delay, c.dlq_max_delay);
  EXPECT_GE(c.max_ack_pending, c.batch_size);
}

TEST(Config, ParsesDurationsInMillisecondsSecondsAndMinutes) {
  Config c = Load(With(kMinimal, {{"NAK_BASE_DELAY", "500ms"},
                                  {"ORDERING_GRACE", "6s"},
                                  {"DLQ_MAX_DELAY", "5m"},
                                  {"ACK_WAIT", "2s"}}));
  EXPECT_EQ(c.nak_base_delay, milliseconds(500));
  EXPECT_EQ(c.ordering_grace, milliseconds(6000));
  EXPECT_EQ(c.dlq_max_delay, milliseconds(300000));
  EXPECT_EQ(c.ack_wait, milliseconds(2000));
}

TEST(Config, ReadsExplicitValues) {
  Config c = Load(With(kMinimal, {{"NATS_URL", "nats://nats-1:4222,nats://nats-2:4222"},
                                  {"HTTP_PORT", "9090"},
                                  {"TENANT_SCHEMA_PREFIX", "t_"},
                                  {"OPS_SCHEMA", "ops"},
                                  {"LOG_LEVEL", "debug"},
                                  {"LOG_FORMAT", "text"},
                                  {"BATCH_SIZE", "250"},
                                  {"MAX_DELIVER", "30"},
                                  {"MAX_EVENT_BYTES", "2048"},
                                  {"DLQ_WORKERS", "8"},
                                  {"DLQ_MAX_ATTEMPTS", "7"}}));
  EXPECT_EQ(c.nats_url, "nats://nats-1:4222,nats://nats-2:4222");
  EXPECT_EQ(c.http_port, 9090);
  EXPECT_EQ(c.tenant_schema_prefix, "t_");
  EXPECT_EQ(c.ops_schema, "ops");
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_EQ(c.log_format, "text");
  EXPECT_EQ(c.batch_size, 250);
  EXPECT_EQ(c.max_deliver, 30);
  EXPECT_EQ(c.max_event_bytes, 2048);
  EXPECT_EQ(c.dlq_workers, 8);
  EXPECT_EQ(c.dlq_max_attempts, 7);
}

TEST(Config, TrimsSurroundingWhitespace) {
  Config c = Load(With(kMinimal, {{"HTTP_PORT", " 9091 "}, {"ORDERING_GRACE", "  3s\n"}}));
  EXPECT_EQ(c.http_port, 9091);
  EXPECT_EQ(c.ordering_grace, milliseconds(3000));
}

TEST(Config, ReportsEachBadValueWithItsKeyName) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"NATS_URL", "http://nats:4222"},
      {"HTTP_PORT", "eighty"},
      {"HTTP_PORT", "70000"},
      {"HTTP_PORT", "-1"},
      {"LOG_LEVEL", "verbose"},
      {"LOG_FORMAT", "xml"},
      {"TENANT_SCHEMA_PREFIX", "Tenant-"},
      {"TENANT_SCHEMA_PREFIX", "x; drop schema public"},
      {"OPS_SCHEMA", "1ops"},
      {"BATCH_SIZE", "0"},
      {"BATCH_SIZE", "12abc"},
      {"MAX_DELIVER", "1"},
      {"ORDERING_GRACE", "6"},
      {"ORDERING_GRACE", "6 s"},
      {"ORDERING_GRACE", "-1s"},
      {"ORDERING_GRACE", "1.5s"},
      {"ACK_WAIT", "5x"},
      {"ACK_WAIT", "10ms"},
      {"NAK_BASE_DELAY", "soon"},
      {"MAX_EVENT_BYTES", "10"},
      {"DLQ_WORKERS", "0"},
      {"DLQ_MAX_ATTEMPTS", "many"},
      {"REALTIME_STREAM", "events.realtime"},
      {"REALTIME_CONSUMER", "a b"},
      {"TENANTS", "acme,1bad"},
  };
  for (const auto& [key, value] : bad) {
    SCOPED_TRACE(key + "=" + value);
    auto errors = Errors(With(kMinimal, {{key, value}}));
    ASSERT_FALSE(errors.empty());
    EXPECT_TRUE(HasErrorFor(errors, key)) << Joined(errors);
  }
}

TEST(Config, ReportsSeveralBadValuesAtOnce) {
  auto errors = Errors({{"HTTP_PORT", "x"}, {"LOG_LEVEL", "loud"}, {"ORDERING_GRACE", "6"}});
  EXPECT_TRUE(HasErrorFor(errors, "HTTP_PORT")) << Joined(errors);
  EXPECT_TRUE(HasErrorFor(errors, "LOG_LEVEL")) << Joined(errors);
  EXPECT_TRUE(HasErrorFor(errors, "ORDERING_GRACE")) << Joined(errors);
  EXPECT_TRUE(HasErrorFor(errors, "POSTGRES_DSN")) << Joined(errors);
  EXPECT_GE(errors.size(), 4u);
}

TEST(Config, RejectsBaseDelayAboveMaxDelay) {
  auto errors = Errors(With(kMinimal, {{"NAK_BASE_DELAY", "10s"}, {"NAK_MAX_DELAY", "1s"}}));
  EXPECT_TRUE(HasErrorFor(errors, "NAK_BASE_DELAY")) << Joined(errors);
  errors = Errors(With(kMinimal, {{"DLQ_BASE_DELAY", "10m"}, {"DLQ_MAX_DELAY", "1m"}}));
  EXPECT_TRUE(HasErrorFor(errors, "DLQ_BASE_DELAY")) << Joined(errors);
}

TEST(Config, RejectsSchemaNamesPostgresReserves) {
  auto errors = Errors(With(kMinimal, {{"TENANT_SCHEMA_PREFIX", "pg_"}}));
  EXPECT_TRUE(HasErrorFor(errors, "TENANT_SCHEMA_PREFIX")) << Joined(errors);
  errors = Errors(With(kMinimal, {{"OPS_SCHEMA", "pg_ops"}}));
  EXPECT_TRUE(HasErrorFor(errors, "OPS_SCHEMA")) << Joined(errors);
}

TEST(Config, RejectsAnOpsSchemaThatATenantSchemaCouldTake) {
  // Tenant "ops" would get tenant_ops: its tables would land next to exhausted_events.
  auto errors = Errors(With(kMinimal, {{"OPS_SCHEMA", "tenant_ops"}}));
  EXPECT_TRUE(HasErrorFor(errors, "OPS_SCHEMA")) << Joined(errors);
  errors = Errors(With(kMinimal, {{"TENANT_SCHEMA_PREFIX", "events_"}}));
  EXPECT_TRUE(HasErrorFor(errors, "OPS_SCHEMA")) << Joined(errors);
  // Names that cannot meet: no tenant id starts with a digit or an underscore.
  EXPECT_TRUE(Errors(With(kMinimal, {{"OPS_SCHEMA", "tenant__ops"}})).empty());
  EXPECT_TRUE(Errors(With(kMinimal, {{"TENANT_SCHEMA_PREFIX", "t_"}})).empty());
}

TEST(Config, RequiresPostgresDsnForProcessorAndWorker) {
  for (Binary b : {Binary::kProcessor, Binary::kDlqWorker}) {
    auto errors = Errors({}, b);
    EXPECT_TRUE(HasErrorFor(errors, "POSTGRES_DSN")) << Joined(errors);
    errors = Errors({{"POSTGRES_DSN", "   "}}, b);
    EXPECT_TRUE(HasErrorFor(errors, "POSTGRES_DSN")) << Joined(errors);
  }
}

TEST(Config, DoesNotRequirePostgresDsnForTheCli) {
  auto r = Config::FromEnvironment(Binary::kCli, FromMap({}));
  ASSERT_TRUE(r.ok()) << Joined(r.error());
  EXPECT_TRUE(r->postgres_dsn.empty());
}

TEST(Config, ParsesTheTenantAllowList) {
  Config c = Load(With(kMinimal, {{"TENANTS", " acme, Beta_2 ,,gamma "}}));
  EXPECT_EQ(c.tenants, (std::vector<std::string>{"acme", "Beta_2", "gamma"}));
  EXPECT_TRUE(c.AllowsTenant("acme"));
  EXPECT_TRUE(c.AllowsTenant("Beta_2"));
  EXPECT_FALSE(c.AllowsTenant("beta_2"));
  EXPECT_FALSE(c.AllowsTenant("delta"));
}

TEST(Config, AllowsEveryTenantWhenTheAllowListIsEmpty) {
  Config c = Load(kMinimal);
  EXPECT_TRUE(c.AllowsTenant("acme"));
  EXPECT_TRUE(c.AllowsTenant("anything"));
}

TEST(Config, RejectsInvalidTenantsInTheAllowList) {
  for (const std::string& v :
       std::vector<std::string>{"acme,1bad", "acme,a.b", "*", std::string(41, 'a'), "acme,ACME"}) {
    auto errors = Errors(With(kMinimal, {{"TENANTS", v}}));
    EXPECT_TRUE(HasErrorFor(errors, "TENANTS")) << v << "\n" << Joined(errors);
  }
}

TEST(Config, SuffixesDefaultConsumerNamesWhenTenantsAreSet) {
  Config all = Load(kMinimal);
  Config some = Load(With(kMinimal, {{"TENANTS", "acme,beta"}}));
  for (auto field :
       {&Config::realtime_consumer, &Config::history_consumer, &Config::dlq_consumer}) {
    const std::string& base = all.*field;
    const std::string& named = some.*field;
    EXPECT_NE(named, base);
    EXPECT_EQ(named.rfind(base, 0), 0u) << named << " should start with " << base;
  }
}

TEST(Config, DerivesTheSameConsumerSuffixWhateverTheTenantOrder) {
  Config a = Load(With(kMinimal, {{"TENANTS", "acme,beta"}}));
  Config b = Load(With(kMinimal, {{"TENANTS", "beta, acme"}}));
  Config other = Load(With(kMinimal, {{"TENANTS", "acme"}}));
  EXPECT_EQ(a.realtime_consumer, b.realtime_consumer);
  EXPECT_NE(a.realtime_consumer, other.realtime_consumer);
}

TEST(Config, KeepsExplicitConsumerNamesWhenTenantsAreSet) {
  Config c = Load(With(kMinimal, {{"TENANTS", "acme"}, {"REALTIME_CONSUMER", "acme-rt"}}));
  Config plain = Load(kMinimal);
  EXPECT_EQ(c.realtime_consumer, "acme-rt");
  EXPECT_NE(c.history_consumer, plain.history_consumer);
  EXPECT_EQ(c.history_consumer.rfind(plain.history_consumer, 0), 0u);
}

class ConfigSecretFile : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::path(::testing::TempDir()) /
            ("evp_config_" + std::to_string(::getpid()) + "_" + info->name() + ".secret");
  }
  void TearDown() override { std::filesystem::remove(path_); }
  void Write(const std::string& content) {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out << content;
  }
  std::filesystem::path path_;
};

TEST_F(ConfigSecretFile, ReadsSecretsFromFileVariables) {
  Write("postgresql://app:from-file@db/events\n");
  Config c = Load({{"POSTGRES_DSN_FILE", path_.string()}});
  EXPECT_EQ(c.postgres_dsn, "postgresql://app:from-file@db/events");
}

TEST_F(ConfigSecretFile, ReadsNatsPasswordFromFile) {
  Write("hunter2\n");
  Config c = Load(With(kMinimal, {{"NATS_PASSWORD_FILE", path_.string()}}));
  EXPECT_EQ(c.nats_password, "hunter2");
}

TEST_F(ConfigSecretFile, PrefersTheDirectVariableOverTheFile) {
  Write("postgresql://app:from-file@db/events");
  Config c = Load(With(kMinimal, {{"POSTGRES_DSN_FILE", path_.string()}}));
  EXPECT_EQ(c.postgres_dsn, kMinimal.at("POSTGRES_DSN"));
}

TEST_F(ConfigSecretFile, ReportsAnUnreadableSecretFileWithItsKeyName) {
  auto errors = Errors({{"POSTGRES_DSN_FILE", path_.string() + ".missing"}});
  EXPECT_TRUE(HasErrorFor(errors, "POSTGRES_DSN_FILE")) << Joined(errors);
}

TEST(Config, MasksThePostgresPasswordInDescribe) {
  Config c = Load(kMinimal);
  const std::string line = DescribeLine(c, "POSTGRES_DSN");
  EXPECT_EQ(line.find("s3cret"), std::string::npos) << line;
  EXPECT_NE(line.find("postgresql://app:****@db:5432/events"), std::string::npos) << line;
}

TEST(Config, MasksNatsPasswordAndTokenInDescribe) {
  Config c = Load(
      With(kMinimal,
           {{"NATS_USER", "svc"}, {"NATS_PASSWORD", "hunter2"}, {"NATS_TOKEN", "tok-123456"}}));
  const std::string all = Joined(c.Describe());
  EXPECT_EQ(all.find("hunter2"), std::string::npos) << all;
  EXPECT_EQ(all.find("tok-123456"), std::string::npos) << all;
  EXPECT_EQ(DescribeLine(c, "NATS_PASSWORD").rfind("NATS_PASSWORD=****", 0), 0u);
  EXPECT_EQ(DescribeLine(c, "NATS_TOKEN").rfind("NATS_TOKEN=****", 0), 0u);
  EXPECT_EQ(DescribeLine(c, "NATS_USER").rfind("NATS_USER=svc", 0), 0u);
}

TEST(Config, MasksCredentialsEmbeddedInTheNatsUrlInDescribe) {
  // nats.c accepts nats://user:password@host; the effective config must not print it.
  Config c = Load(With(kMinimal, {{"NATS_URL", "nats://svc:hunter2@nats:4222"}}));
  const std::string all = Joined(c.Describe());
  EXPECT_EQ(all.find("hunter2"), std::string::npos) << DescribeLine(c, "NATS_URL");
}

TEST(Config, BatchAndStatementCacheDefaultsAndBounds) {
  Config c = Load(kMinimal);
  EXPECT_EQ(c.batch_size, 4000);
  EXPECT_EQ(c.max_ack_pending, 16000);
  EXPECT_EQ(c.batch_max_bytes, 4 * 1024 * 1024);
  EXPECT_EQ(c.db_statement_cache, 2000);
  c = Load(With(kMinimal, {{"BATCH_MAX_BYTES", "0"}, {"DB_STATEMENT_CACHE", "16"}}));
  EXPECT_EQ(c.batch_max_bytes, 0);
  EXPECT_EQ(c.db_statement_cache, 16);
  auto errors = Errors({{"BATCH_MAX_BYTES", "-1"}, {"DB_STATEMENT_CACHE", "15"}});
  EXPECT_TRUE(HasErrorFor(errors, "BATCH_MAX_BYTES")) << Joined(errors);
  EXPECT_TRUE(HasErrorFor(errors, "DB_STATEMENT_CACHE")) << Joined(errors);
}

TEST(Config, AnEmptyValueMeansTheDefault) {
  Config c = Load(With(kMinimal, {{"BATCH_SIZE", ""}, {"NATS_URL", "  "}, {"ORDERING_GRACE", ""}}));
  EXPECT_EQ(c.batch_size, Config{}.batch_size);
  EXPECT_EQ(c.nats_url, "nats://127.0.0.1:4222");
  EXPECT_EQ(DescribeLine(c, "ORDERING_GRACE").rfind("ORDERING_GRACE=6s  # ", 0), 0u);
  EXPECT_EQ(Load(With(kMinimal, {{"ORDERING_GRACE", "0"}})).ordering_grace.count(), 0);
}

TEST(MaskNatsUrls, HidesPasswordsAndTokensOfEveryUrl) {
  EXPECT_EQ(MaskNatsUrls("nats://s3cr3ttoken@h:4222"), "nats://****@h:4222");
  EXPECT_EQ(MaskNatsUrls("nats://a:pw1@h1:4222,tls://b:pw2@h2:4222,nats://tok@h3"),
            "nats://a:****@h1:4222,tls://b:****@h2:4222,nats://****@h3");
  EXPECT_EQ(MaskNatsUrls("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
  EXPECT_EQ(MaskNatsUrls("nats://u:p@ss@host:4222"), "nats://u:****@host:4222");
  EXPECT_EQ(MaskNatsUrls("nats://host:4222/x@y"), "nats://host:4222/x@y");
  Config c = Load(With(kMinimal, {{"NATS_URL", "nats://s3cr3ttoken@nats:4222"}}));
  EXPECT_EQ(Joined(c.Describe()).find("s3cr3ttoken"), std::string::npos);
}

TEST(Config, DescribesEveryDocumentedKeyWithADocLine) {
  Config c = Load(kMinimal);
  for (const char* key :
       {"NATS_URL",       "POSTGRES_DSN",   "HTTP_PORT",      "TENANT_SCHEMA_PREFIX",
        "OPS_SCHEMA",     "TENANTS",        "LOG_LEVEL",      "LOG_FORMAT",
        "BATCH_SIZE",     "BATCH_MAX_WAIT", "ACK_WAIT",       "MAX_DELIVER",
        "NAK_BASE_DELAY", "NAK_MAX_DELAY",  "ORDERING_GRACE", "MAX_EVENT_BYTES",
        "DLQ_WORKERS",    "DLQ_BASE_DELAY", "DLQ_MAX_DELAY",  "DLQ_MAX_ATTEMPTS"}) {
    const std::string line = DescribeLine(c, key);
    EXPECT_NE(line.find("  # "), std::string::npos) << line;
  }
  EXPECT_EQ(DescribeLine(c, "ORDERING_GRACE").rfind("ORDERING_GRACE=6s  # ", 0), 0u);
}

TEST(Config, QuotesTheBadValueInTheErrorLine) {
  auto errors = Errors({{"POSTGRES_DSN", ""}, {"NATS_URL", "bad"}});
  const std::string all = Joined(errors);
  EXPECT_NE(all.find("NATS_URL='bad'"), std::string::npos) << all;
  EXPECT_TRUE(HasErrorFor(errors, "POSTGRES_DSN")) << all;
}

TEST(Config, RejectsNatsUrlsWithoutAHostOrWithABadPort) {
  for (const char* bad :
       {"nats://127.0.0.1:abc", "nats://h:99999", "nats://h:0", "nats://:4222",
        "nats://h:", "nats://[::1", "nats://h:4222,nats://g:x", "http://h:4222", "nats://u:pw@"}) {
    auto errors = Errors({{"POSTGRES_DSN", "postgresql://h/db"}, {"NATS_URL", bad}});
    EXPECT_TRUE(HasErrorFor(errors, "NATS_URL")) << bad;
  }
  for (const char* good :
       {"nats://127.0.0.1:4222", "nats://nats", "tls://u:p@h:4443", "nats://u:pa/ss@h:4222",
        "nats://[::1]:4222", "nats://a:4222, nats://b:4222", "nats://tok@h"}) {
    auto errors = Errors({{"POSTGRES_DSN", "postgresql://h/db"}, {"NATS_URL", good}});
    EXPECT_FALSE(HasErrorFor(errors, "NATS_URL")) << good << ": " << Joined(errors);
  }
}

TEST(Config, ABadNatsUrlIsReportedWithItsPasswordMasked) {
  auto errors =
      Errors({{"POSTGRES_DSN", "postgresql://h/db"}, {"NATS_URL", "nats://u:hunter2@h:x"}});
  const std::string all = Joined(errors);
  EXPECT_TRUE(HasErrorFor(errors, "NATS_URL")) << all;
  EXPECT_EQ(all.find("hunter2"), std::string::npos) << all;
}

TEST(Config, DbLockTimeoutIsADurationUpToAnHourAndZeroMeansNoLimit) {
  EXPECT_EQ(Load(kMinimal).db_lock_timeout, std::chrono::milliseconds(5000));
  EXPECT_EQ(Load(With(kMinimal, {{"DB_LOCK_TIMEOUT", "0"}})).db_lock_timeout,
            std::chrono::milliseconds(0));
  EXPECT_EQ(Load(With(kMinimal, {{"DB_LOCK_TIMEOUT", "750ms"}})).db_lock_timeout,
            std::chrono::milliseconds(750));
  for (const char* bad : {"2h", "-1s", "5 s", "soon"}) {
    EXPECT_TRUE(HasErrorFor(Errors(With(kMinimal, {{"DB_LOCK_TIMEOUT", bad}})), "DB_LOCK_TIMEOUT"))
        << bad;
  }
}

TEST(Config, RejectsTwoStreamsOfOneName) {
  auto errors = Errors({{"POSTGRES_DSN", "postgresql://h/db"}, {"REALTIME_STREAM", "EVENTS_DLQ"}});
  const std::string all = Joined(errors);
  EXPECT_NE(all.find("REALTIME_STREAM and DLQ_STREAM are both 'EVENTS_DLQ'"), std::string::npos)
      << all;
}

TEST(Config, RejectsInvalidTenantsInMetricsTenants) {
  auto errors = Errors({{"POSTGRES_DSN", "postgresql://h/db"}, {"METRICS_TENANTS", "acme,bad.id"}});
  EXPECT_TRUE(HasErrorFor(errors, "METRICS_TENANTS")) << Joined(errors);
  auto fine = Errors({{"POSTGRES_DSN", "postgresql://h/db"}, {"METRICS_TENANTS", "acme, beta_2"}});
  EXPECT_FALSE(HasErrorFor(fine, "METRICS_TENANTS")) << Joined(fine);
}

TEST(MaskDsn, MasksThePasswordOfAUri) {
  EXPECT_EQ(MaskDsn("postgresql://user:secret@host:5432/db"),
            "postgresql://user:****@host:5432/db");
  EXPECT_EQ(MaskDsn("postgres://u:p%40ss@h/db?sslmode=require"),
            "postgres://u:****@h/db?sslmode=require");
}

TEST(MaskDsn, KeepsAUriWithoutPasswordUnchanged) {
  EXPECT_EQ(MaskDsn("postgresql://user@host/db"), "postgresql://user@host/db");
  EXPECT_EQ(MaskDsn("postgresql://host:5432/db"), "postgresql://host:5432/db");
  EXPECT_EQ(MaskDsn(""), "");
}

TEST(MaskDsn, MasksThePasswordOfKeyValueForm) {
  EXPECT_EQ(MaskDsn("host=db user=app password=secret dbname=events"),
            "host=db user=app password=**** dbname=events");
  EXPECT_EQ(MaskDsn("host=db password = 'with spaces' dbname=events"),
            "host=db password = **** dbname=events");
}

TEST(MaskDsn, MasksAPasswordGivenAsUriQueryParameter) {
  const std::string masked = MaskDsn("postgresql://app@db/events?password=secret");
  EXPECT_EQ(masked.find("secret"), std::string::npos) << masked;
  // The parameters after it stay: the printed DSN is the one in effect.
  EXPECT_EQ(MaskDsn("postgresql://h/db?password=s3cretPW&sslmode=require&application_name=x"),
            "postgresql://h/db?password=****&sslmode=require&application_name=x");
  EXPECT_EQ(MaskDsn("postgresql://h/db?sslmode=require&password=s3cretPW"),
            "postgresql://h/db?sslmode=require&password=****");
}

TEST(MaskDsn, MasksTheClientKeysPasswordInBothForms) {
  EXPECT_EQ(MaskDsn("postgresql://u:pw@h/db?sslpassword=keyPW&sslmode=require"),
            "postgresql://u:****@h/db?sslpassword=****&sslmode=require");
  EXPECT_EQ(MaskDsn("host=h dbname=db sslpassword=keyPW sslmode=require"),
            "host=h dbname=db sslpassword=**** sslmode=require");
}

TEST(MaskDsn, MasksAQuotedPasswordWithEscapedQuotesWhole) {
  EXPECT_EQ(MaskDsn(R"(host=h user=u password='s3cret\' PW' dbname=db)"),
            "host=h user=u password=**** dbname=db");
  EXPECT_EQ(MaskDsn(R"(host=h password=s3cret\ PW dbname=db)"), "host=h password=**** dbname=db");
  EXPECT_EQ(MaskDsn(R"(host=h password='unclosed PW)"), "host=h password=****");
}

TEST(Config, NamesEnvironmentVariablesThatLookLikeMisspeltSettings) {
  const auto misses = Config::NearMisses({"BATCH_SIZ", "batch_size", "DLQ_WORKER", "LOG_LEVL",
                                          "BATCH_SIZE", "DLQ_WORKERS", "PATH", "HOSTNAME",
                                          "NATS_PORT", "POSTGRES_PORT", "PG_PORT", "TENANT"});
  const std::vector<std::pair<std::string, std::string>> want = {{"BATCH_SIZ", "BATCH_SIZE"},
                                                                 {"batch_size", "BATCH_SIZE"},
                                                                 {"DLQ_WORKER", "DLQ_WORKERS"},
                                                                 {"LOG_LEVL", "LOG_LEVEL"},
                                                                 {"TENANT", "TENANTS"}};
  EXPECT_EQ(misses, want) << "settings of any binary, and unrelated names, are not reported";
}

}  // namespace
}  // namespace evp
