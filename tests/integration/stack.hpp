#pragma once
// The whole product on real servers: a fresh nats-server -js, this process's PostgreSQL
// database, and events-processor + dlq-worker as child processes, exactly as deployed.
// Tests publish with TestPublisher and assert on the database, polling with deadlines.
#include <gtest/gtest.h>
#include <httplib.h>

#include <iostream>
#include <map>
#include <memory>
#include <string>

#include "support/db.hpp"
#include "support/nats_client.hpp"
#include "support/servers.hpp"

namespace evp::testing {

class Stack {
 public:
  // extra_env overrides the defaults below for both binaries. With private_postgres the
  // stack gets its own PostgreSQL cluster (to stop and start it).
  explicit Stack(const std::map<std::string, std::string>& extra_env = {},
                 bool private_postgres = false) {
    if (private_postgres) private_pg_ = StartPrivatePostgres();
    env_ = {{"NATS_URL", nats_.Url()},
            {"POSTGRES_DSN", private_pg_ ? private_pg_->Dsn() : PostgresServer::Shared().Dsn()},
            {"LOG_FORMAT", "text"},
            {"LOG_LEVEL", "info"},
            {"BATCH_MAX_WAIT", "20ms"},
            {"NAK_BASE_DELAY", "100ms"},
            {"NAK_MAX_DELAY", "1s"},
            {"ORDERING_GRACE", "3s"},
            {"DLQ_BASE_DELAY", "100ms"}};
    for (auto& [k, v] : extra_env) env_[k] = v;
    processor_port_ = FreeTcpPort();
    worker_port_ = FreeTcpPort();
    auto penv = env_;
    penv["HTTP_PORT"] = std::to_string(processor_port_);
    processor_ = std::make_unique<ChildProcess>(BinaryPath("events-processor"),
                                                std::vector<std::string>{}, penv);
    auto wenv = env_;
    wenv["HTTP_PORT"] = std::to_string(worker_port_);
    worker_ =
        std::make_unique<ChildProcess>(BinaryPath("dlq-worker"), std::vector<std::string>{}, wenv);
    // Ready once both report ready (streams, consumers and the ops schema exist).
    const bool ready = WaitFor([&] { return Ready(processor_port_) && Ready(worker_port_); },
                               std::chrono::seconds(30));
    if (!ready) {
      ADD_FAILURE() << "stack not ready\nprocessor log:\n"
                    << processor_->Log() << "\nworker log:\n"
                    << worker_->Log();
    }
    publisher_ = std::make_unique<TestPublisher>(nats_.Url());
  }

  ~Stack() {
    // Both drain at the same time; the members' destructors then wait for them.
    if (processor_) processor_->Terminate();
    if (worker_) worker_->Terminate();
    if (::testing::Test::HasFailure()) {
      std::cerr << "---- events-processor log ----\n"
                << processor_->Log() << "\n---- dlq-worker log ----\n"
                << WorkerLogs() << "\n";
    }
  }

  // Starts (or restarts) the DLQ worker on the same port.
  void StartWorker() {
    auto wenv = env_;
    wenv["HTTP_PORT"] = std::to_string(worker_port_);
    if (worker_) old_worker_logs_ += worker_->Log();
    worker_.reset();
    worker_ =
        std::make_unique<ChildProcess>(BinaryPath("dlq-worker"), std::vector<std::string>{}, wenv);
  }
  std::string WorkerLogs() const { return old_worker_logs_ + worker_->Log(); }
  PostgresServer* PrivatePostgres() { return private_pg_.get(); }

  PubResult Publish(const std::string& subject, std::string_view bytes,
                    const std::string& msg_id = "",
                    const std::map<std::string, std::string>& headers = {}) {
    return publisher_->Publish(subject, bytes, msg_id.empty() ? UniqueName("m") : msg_id, headers);
  }

  const std::string& Dsn() const { return env_.at("POSTGRES_DSN"); }
  NatsServer& Nats() { return nats_; }
  ChildProcess& Processor() { return *processor_; }
  ChildProcess& Worker() { return *worker_; }
  int ProcessorPort() const { return processor_port_; }
  int WorkerPort() const { return worker_port_; }
  const std::map<std::string, std::string>& Env() const { return env_; }

  // Count of rows `sql` returns as its single value; -1 while the query fails (e.g. the
  // tenant schema does not exist yet).
  int64_t Count(const std::string& sql) const { return TryQueryInt(Dsn(), sql).value_or(-1); }
  bool WaitCount(const std::string& sql, int64_t expected,
                 std::chrono::milliseconds deadline = std::chrono::seconds(20)) const {
    return WaitFor([&] { return Count(sql) == expected; }, deadline);
  }

  static bool Ready(int port);
  static std::string HttpGet(int port, const std::string& path, int* status = nullptr);

 private:
  std::unique_ptr<PostgresServer> private_pg_;
  NatsServer nats_;
  std::string old_worker_logs_;
  std::map<std::string, std::string> env_;
  int processor_port_ = 0;
  int worker_port_ = 0;
  std::unique_ptr<ChildProcess> processor_;
  std::unique_ptr<ChildProcess> worker_;
  std::unique_ptr<TestPublisher> publisher_;
};

inline std::string Stack::HttpGet(int port, const std::string& path, int* status) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(1, 0);
  client.set_read_timeout(5, 0);
  auto res = client.Get(path.c_str());
  if (status != nullptr) *status = res ? res->status : -1;
  return res ? res->body : "";
}

inline bool Stack::Ready(int port) {
  int status = 0;
  HttpGet(port, "/readyz", &status);
  return status == 200;
}

}  // namespace evp::testing
