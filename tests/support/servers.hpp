#pragma once
// Real servers and child processes for integration tests: nats-server with JetStream and
// PostgreSQL 15 on free ports under temp directories, plus the project's binaries as child
// processes. Everything started here is stopped by its destructor, and children die with
// the test process (PR_SET_PDEATHSIG), so a crashed test leaves no server behind.
//
// Thread-safety: each object is meant to be used from the test's main thread;
// PostgresServer::Shared() may be called from any thread.
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace evp::testing {

// A TCP port on 127.0.0.1 that was free a moment ago, from below the kernel's ephemeral
// range so that no outgoing connection can take it before the server binds it.
int FreeTcpPort();

// prefix + pid + counter + random: only [a-z0-9_], at most 30 characters, starts with a
// letter, so it is usable as a tenant id, schema, stream or consumer name.
std::string UniqueName(std::string_view prefix);

// Polls pred every 20 ms until it returns true or the deadline passes; returns pred's last
// value.
bool WaitFor(const std::function<bool()>& pred,
             std::chrono::milliseconds deadline = std::chrono::seconds(20));

// EVP_BINARY_DIR + "/" + name: the project's binaries (events-processor, dlq-worker, ...).
std::string BinaryPath(std::string_view name);
// EVP_SOURCE_DIR + "/" + relative: files of the source tree (schemas/, tests/testdata/).
std::string SourcePath(std::string_view relative);

// A child process (fork/exec) with extra environment variables on top of this process's
// environment; stdout and stderr go to a log file in its own temp directory (kept, and its
// path printed, when the current test failed). The destructor terminates it (SIGTERM, then
// SIGKILL after 10 s). With run_as_user set (only when root), it runs as that OS user.
class ChildProcess {
 public:
  ChildProcess(const std::string& path, std::vector<std::string> args,
               const std::map<std::string, std::string>& env, const std::string& run_as_user = "");
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t Pid() const { return pid_; }
  bool Running();
  void Signal(int sig);
  // SIGTERM without waiting, once: the destructor then only waits. Lets a caller stop
  // several processes at the same time rather than one after the other.
  void Terminate();
  void Kill();  // SIGKILL and reap
  // Exit code (128 + signal number when killed by a signal), or nullopt on timeout.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  std::string Log() const;  // contents of the log so far
  const std::string& LogPath() const { return log_path_; }

 private:
  bool Reap(bool block);

  std::string path_;
  std::string dir_;
  std::string log_path_;
  pid_t pid_ = -1;
  bool terminating_ = false;
  std::optional<int> exit_code_;
};

// A real `nats-server -js` on a free port with a fresh temp store dir. Stop/Start/Kill keep
// the port and the store, so tests can restart the server under a running client.
class NatsServer {
 public:
  NatsServer();  // starts and waits until it accepts connections with JetStream on
  ~NatsServer();
  NatsServer(const NatsServer&) = delete;
  NatsServer& operator=(const NatsServer&) = delete;

  std::string Url() const;  // nats://127.0.0.1:<port>
  int Port() const { return port_; }
  void Stop();   // graceful stop (SIGTERM, wait), keeps the store dir
  void Start();  // start again on the same port and store dir, wait until ready
  void Kill();   // SIGKILL, keeps the store dir
  bool Running() const { return process_ != nullptr; }
  std::string Log() const;  // log of the current (or last) run

 private:
  bool Launch();  // false when the server exited before accepting connections

  std::string dir_;
  int port_ = 0;
  std::unique_ptr<ChildProcess> process_;
  std::string last_log_;
};

// The DSN `dsn` with its database replaced (URI or key=value form).
std::string DsnWithDatabase(const std::string& dsn, const std::string& database);

// PostgreSQL 15 for the test process. If EVP_TEST_POSTGRES_ADMIN_DSN is set (scripts/test.sh
// does), uses that server and creates a fresh database unique to this process (dropped at
// exit, best effort). Otherwise starts its own throw-away cluster (fsync off) in a temp dir on
// a free port, as the `postgres` OS user when running as root, lazily on first use, stopped
// at process exit.
class PostgresServer {
 public:
  static PostgresServer& Shared();
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  std::string Dsn() const;       // DSN of this process's fresh database
  std::string AdminDsn() const;  // DSN of the `postgres` maintenance database
  int Port() const { return port_; }
  bool Owned() const { return owned_; }  // true when this process started the cluster
  void Stop();                           // fast shutdown (only when Owned)
  void Start();                          // start again on the same port (only when Owned)
  bool Running() const;

 private:
  friend std::unique_ptr<PostgresServer> StartPrivatePostgres();
  struct OwnedTag {};
  explicit PostgresServer(std::string admin_dsn);  // external server
  explicit PostgresServer(OwnedTag);               // own cluster
  void CreateDatabase();
  bool Launch();  // false when the server exited before accepting connections

  bool owned_ = false;
  std::string external_admin_dsn_;
  std::string database_;
  std::string dir_;
  std::string run_as_;
  int port_ = 0;
  std::unique_ptr<ChildProcess> postmaster_;
};

// A PostgresServer always owned by the test (for outage tests): its own cluster, stopped and
// removed when the pointer goes away.
std::unique_ptr<PostgresServer> StartPrivatePostgres();

}  // namespace evp::testing
