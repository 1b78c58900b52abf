#include "support/servers.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <pqxx/pqxx>
#include <random>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>

extern char** environ;

#ifndef EVP_BINARY_DIR
#error "EVP_BINARY_DIR must be defined (tests/CMakeLists.txt does)"
#endif
#ifndef EVP_SOURCE_DIR
#error "EVP_SOURCE_DIR must be defined (tests/CMakeLists.txt does)"
#endif

namespace evp::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

constexpr milliseconds kStartDeadline{60'000};
constexpr milliseconds kStopDeadline{30'000};
constexpr milliseconds kProcessPoll{10};

[[noreturn]] void ThrowErrno(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

std::string MakeTempDir(const std::string& prefix) {
  std::string pattern = (fs::temp_directory_path() / (prefix + "XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) ThrowErrno("mkdtemp " + pattern);
  return pattern;
}

bool KeepTestDirs() {
  const char* keep = std::getenv("EVP_KEEP_TEST_DIRS");
  return keep != nullptr && *keep != '\0' && std::string_view(keep) != "0";
}

// True while a test body runs and has already failed: its logs are worth keeping.
bool CurrentTestFailed() {
  return ::testing::UnitTest::GetInstance()->current_test_info() != nullptr &&
         ::testing::Test::HasFailure();
}

void RemoveTree(const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
}

std::string Base36(uint64_t v) {
  constexpr std::string_view kDigits = "0123456789abcdefghijklmnopqrstuvwxyz";
  std::string out;
  do {
    out.insert(out.begin(), kDigits[v % 36]);
    v /= 36;
  } while (v != 0);
  return out;
}

std::string FindExecutable(const std::string& name, const std::vector<std::string>& fallbacks) {
  if (name.find('/') != std::string::npos) return name;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream dirs(path);
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
      if (dir.empty()) continue;
      std::string candidate = dir + "/" + name;
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
  }
  for (const auto& candidate : fallbacks) {
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  throw std::runtime_error("executable not found: " + name);
}

std::string NatsServerBinary() {
  if (const char* env = std::getenv("EVP_NATS_SERVER"); env != nullptr && *env != '\0') {
    return env;
  }
  return FindExecutable("nats-server", {"/usr/sbin/nats-server", "/usr/bin/nats-server",
                                        "/usr/local/bin/nats-server"});
}

std::string PgBinDir() {
  for (const char* var : {"EVP_PG_BIN", "PG_BIN"}) {
    if (const char* env = std::getenv(var); env != nullptr && *env != '\0') return env;
  }
  if (fs::exists("/usr/lib/postgresql/15/bin/postgres")) return "/usr/lib/postgresql/15/bin";
  std::string best;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    std::string bin = entry.path().string() + "/bin";
    if (!fs::exists(bin + "/postgres")) continue;
    // Versions are plain numbers: compare numerically.
    if (best.empty() || std::stoi(entry.path().filename().string()) >
                            std::stoi(fs::path(best).parent_path().filename().string())) {
      best = bin;
    }
  }
  if (best.empty()) throw std::runtime_error("PostgreSQL server binaries not found");
  return best;
}

struct OsUser {
  uid_t uid;
  gid_t gid;
};

OsUser LookupUser(const std::string& name) {
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* result = nullptr;
  if (::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &result) != 0 || result == nullptr) {
    throw std::runtime_error("OS user not found: " + name +
                             " (PostgreSQL refuses to run as root; install postgresql)");
  }
  return {pw.pw_uid, pw.pw_gid};
}

// Connects to 127.0.0.1:port and reads the server's INFO line; true when JetStream is on.
bool NatsAcceptsJetStream(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  timeval tv{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  bool ok = false;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    std::string line;
    char buf[4096];
    while (line.find('\n') == std::string::npos && line.size() < 65536) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) break;
      line.append(buf, static_cast<size_t>(n));
    }
    ok = line.rfind("INFO ", 0) == 0 && line.find("\"jetstream\":true") != std::string::npos;
  }
  ::close(fd);
  return ok;
}

bool PostgresAccepts(const std::string& dsn) {
  try {
    pqxx::connection conn(dsn);
    return conn.is_open();
  } catch (const std::exception&) {
    return false;
  }
}

// Replaces the database of a DSN: URI form (postgresql://u@h:p/db?x) or key=value form.
std::string WithDatabase(const std::string& dsn, const std::string& database) {
  auto scheme = dsn.find("://");
  if (scheme == std::string::npos) return dsn + " dbname=" + database;
  auto path = dsn.find_first_of("/?", scheme + 3);
  if (path == std::string::npos) return dsn + "/" + database;
  if (dsn[path] == '?') return dsn.substr(0, path) + "/" + database + dsn.substr(path);
  auto query = dsn.find('?', path);
  return dsn.substr(0, path + 1) + database +
         (query == std::string::npos ? std::string() : dsn.substr(query));
}

int PortOfDsn(const std::string& dsn) {
  auto scheme = dsn.find("://");
  if (scheme != std::string::npos) {
    auto host_start = dsn.find('@', scheme + 3);
    host_start = host_start == std::string::npos ? scheme + 3 : host_start + 1;
    auto host_end = dsn.find_first_of("/?", host_start);
    std::string host = dsn.substr(host_start, host_end - host_start);
    auto colon = host.rfind(':');
    if (colon != std::string::npos && host.find(']', colon) == std::string::npos) {
      return std::atoi(host.c_str() + colon + 1);
    }
    return 5432;
  }
  auto key = dsn.find("port=");
  return key == std::string::npos ? 5432 : std::atoi(dsn.c_str() + key + 5);
}

}  // namespace

std::string DsnWithDatabase(const std::string& dsn, const std::string& database) {
  return WithDatabase(dsn, database);
}

// ---------------------------------------------------------------------------------------------

namespace {

// Binds 127.0.0.1:port (0: any); returns the bound port, or 0 when taken.
int TryBind(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  socklen_t len = sizeof addr;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  ::close(fd);
  return ok ? ntohs(addr.sin_port) : 0;
}

// Lowest port the kernel hands out to outgoing connections (32768 by default).
int EphemeralLow() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  int low = 0;
  if (!(in >> low) || low <= 12000) return 0;
  return low;
}

}  // namespace

// Test processes run side by side (ctest -j): a port one of them picked stays reserved for
// its lifetime by an flock on /tmp/evp-test-ports/<port>, so that no other picks it between
// the pick and its server's bind. The lock goes with the process, however it ends. False
// when another live test process holds the port.
bool ReservePort(int port, int& fd_out) {
  static const std::string dir = [] {
    std::string d = "/tmp/evp-test-ports";
    ::mkdir(d.c_str(), 0777);
    ::chmod(d.c_str(), 01777);  // whoever runs tests later (root or not) can add to it
    return d;
  }();
  fd_out = ::open((dir + "/" + std::to_string(port)).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (fd_out < 0) return true;  // cannot reserve: the bind check below still applies
  if (::flock(fd_out, LOCK_EX | LOCK_NB) == 0) return true;
  ::close(fd_out);
  fd_out = -1;
  return false;
}

int FreeTcpPort() {
  // A port from below the ephemeral range: between this check and the server's bind, no
  // outgoing connection can take it, and other test processes skip the ones reserved here.
  // Above it, any client connecting anywhere could.
  static std::mutex mu;
  static std::mt19937 rng{std::random_device{}() ^ static_cast<unsigned>(::getpid())};
  const int low = EphemeralLow();
  if (low > 0) {
    std::lock_guard lock(mu);
    std::uniform_int_distribution<int> pick(10000, low - 1);
    for (int attempt = 0; attempt < 100; ++attempt) {
      const int candidate = pick(rng);
      int fd = -1;
      if (!ReservePort(candidate, fd)) continue;
      if (int port = TryBind(candidate); port > 0) return port;  // fd stays open: reserved
      if (fd >= 0) ::close(fd);
    }
  }
  if (int port = TryBind(0); port > 0) return port;
  ThrowErrno("bind 127.0.0.1:0");
}

std::string UniqueName(std::string_view prefix) {
  static std::atomic<uint64_t> counter{0};
  static std::mutex rng_mu;
  static std::mt19937_64 rng{std::random_device{}() ^
                             static_cast<uint64_t>(steady_clock::now().time_since_epoch().count())};
  constexpr size_t kMaxLength = 30;

  std::string name;
  for (char c : prefix) {
    if (c >= 'A' && c <= 'Z') {
      name += static_cast<char>(c - 'A' + 'a');
    } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_') {
      name += c;
    } else {
      name += '_';
    }
  }
  if (name.empty() || name[0] < 'a' || name[0] > 'z') name.insert(0, "t");

  uint64_t random = 0;
  {
    std::lock_guard lock(rng_mu);
    random = rng() % (36ULL * 36 * 36 * 36);
  }
  std::string rand36 = Base36(random);
  rand36.insert(0, 4 - rand36.size(), '0');
  std::string suffix =
      "_" + Base36(static_cast<uint64_t>(::getpid())) + "_" + Base36(counter.fetch_add(1)) + rand36;
  if (name.size() + suffix.size() > kMaxLength) name.resize(kMaxLength - suffix.size());
  return name + suffix;
}

bool WaitFor(const std::function<bool()>& pred, std::chrono::milliseconds deadline) {
  const auto end = steady_clock::now() + deadline;
  while (steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return pred();
}

std::string BinaryPath(std::string_view name) {
  return std::string(EVP_BINARY_DIR) + "/" + std::string(name);
}

std::string SourcePath(std::string_view relative) {
  return std::string(EVP_SOURCE_DIR) + "/" + std::string(relative);
}

// ---------------------------------------------------------------------------------------------

ChildProcess::ChildProcess(const std::string& path, std::vector<std::string> args,
                           const std::map<std::string, std::string>& env,
                           const std::string& run_as_user)
    : path_(FindExecutable(path, {})) {
  dir_ = MakeTempDir("evp-child-");
  log_path_ = dir_ + "/" + fs::path(path_).filename().string() + ".log";

  // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
  std::vector<std::string> argv_storage;
  argv_storage.reserve(args.size() + 1);
  argv_storage.push_back(path_);
  for (auto& a : args) argv_storage.push_back(std::move(a));
  std::vector<char*> argv;
  argv.reserve(argv_storage.size() + 1);
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::map<std::string, std::string> merged;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    auto eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    merged.emplace(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
  }
  for (auto& [k, v] : env) merged[k] = v;
  std::vector<std::string> env_storage;
  env_storage.reserve(merged.size());
  for (const auto& [k, v] : merged) env_storage.push_back(k + "=" + v);
  std::vector<char*> envp;
  envp.reserve(env_storage.size() + 1);
  for (auto& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);

  std::optional<OsUser> user;
  if (!run_as_user.empty() && ::geteuid() == 0) user = LookupUser(run_as_user);

  int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) ThrowErrno("open " + log_path_);
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd < 0) {
    ::close(log_fd);
    ThrowErrno("open /dev/null");
  }
  const pid_t parent = ::getpid();
  // PR_SET_PDEATHSIG fires when the forking *thread* exits: only tie the child to the main
  // thread, which lives as long as the process.
  const bool tie_to_parent = ::syscall(SYS_gettid) == parent;

  pid_ = ::fork();
  if (pid_ < 0) {
    ::close(log_fd);
    ::close(null_fd);
    ThrowErrno("fork");
  }
  if (pid_ == 0) {
    ::dup2(null_fd, STDIN_FILENO);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGCHLD, SIGUSR1, SIGUSR2}) {
      ::sigaction(sig, &dfl, nullptr);
    }
    if (user) {
      if (::setgroups(0, nullptr) != 0 || ::setgid(user->gid) != 0 || ::setuid(user->uid) != 0 ||
          ::chdir("/") != 0) {
        constexpr char kMsg[] = "ChildProcess: cannot switch user\n";
        [[maybe_unused]] auto n = ::write(STDERR_FILENO, kMsg, sizeof kMsg - 1);
        ::_exit(126);
      }
    }
    // After the user switch, which clears the parent-death signal.
    if (tie_to_parent) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
    }
    ::execve(path_.c_str(), argv.data(), envp.data());
    constexpr char kMsg[] = "ChildProcess: execve failed\n";
    [[maybe_unused]] auto n = ::write(STDERR_FILENO, kMsg, sizeof kMsg - 1);
    ::_exit(127);
  }
  ::close(log_fd);
  ::close(null_fd);
}

ChildProcess::~ChildProcess() {
  if (!exit_code_) {
    Terminate();
    if (!Wait(milliseconds(10'000))) Kill();
  }
  if (KeepTestDirs() || CurrentTestFailed()) {
    std::cerr << "[ChildProcess] log of " << path_ << " kept at " << log_path_ << "\n";
  } else {
    RemoveTree(dir_);
  }
}

bool ChildProcess::Reap(bool block) {
  if (exit_code_) return true;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return false;
  if (r < 0) {
    exit_code_ = -1;  // not our child any more (reaped elsewhere)
  } else if (WIFEXITED(status)) {
    exit_code_ = WEXITSTATUS(status);
  } else {
    exit_code_ = 128 + WTERMSIG(status);
  }
  return true;
}

bool ChildProcess::Running() { return !Reap(false); }

void ChildProcess::Signal(int sig) {
  if (!exit_code_) ::kill(pid_, sig);
}

void ChildProcess::Terminate() {
  // A second SIGTERM would end the services' graceful drain at once.
  if (terminating_) return;
  terminating_ = true;
  Signal(SIGTERM);
}

void ChildProcess::Kill() {
  Signal(SIGKILL);
  Reap(true);
}

std::optional<int> ChildProcess::Wait(std::chrono::milliseconds timeout) {
  const auto end = steady_clock::now() + timeout;
  while (!Reap(false)) {
    if (steady_clock::now() >= end) return std::nullopt;
    std::this_thread::sleep_for(kProcessPoll);
  }
  return exit_code_;
}

std::string ChildProcess::Log() const {
  std::ifstream in(log_path_, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// ---------------------------------------------------------------------------------------------

NatsServer::NatsServer() : dir_(MakeTempDir("evp-nats-")) {
  // The free port can be taken between FreeTcpPort() and the server's bind: retry.
  for (int attempt = 0; attempt < 5; ++attempt) {
    port_ = FreeTcpPort();
    if (Launch()) return;
  }
  RemoveTree(dir_);
  throw std::runtime_error("nats-server did not start; last log:\n" + last_log_);
}

NatsServer::~NatsServer() {
  if (process_) Stop();
  if (!KeepTestDirs()) RemoveTree(dir_);
}

std::string NatsServer::Url() const { return "nats://127.0.0.1:" + std::to_string(port_); }

bool NatsServer::Launch() {
  process_ = std::make_unique<ChildProcess>(
      NatsServerBinary(),
      std::vector<std::string>{"-js", "-sd", dir_ + "/store", "-a", "127.0.0.1", "-p",
                               std::to_string(port_), "-n", "evp-test-" + std::to_string(port_)},
      std::map<std::string, std::string>{});
  const auto end = steady_clock::now() + kStartDeadline;
  while (steady_clock::now() < end) {
    if (NatsAcceptsJetStream(port_)) return true;
    if (!process_->Running()) {
      last_log_ = process_->Log();
      process_.reset();
      return false;
    }
    std::this_thread::sleep_for(kProcessPoll);
  }
  last_log_ = process_->Log();
  process_.reset();
  throw std::runtime_error("nats-server not ready within 60 s; log:\n" + last_log_);
}

void NatsServer::Stop() {
  if (!process_) return;
  process_->Signal(SIGTERM);
  if (!process_->Wait(kStopDeadline)) process_->Kill();
  last_log_ = process_->Log();
  process_.reset();
}

void NatsServer::Start() {
  if (process_ && process_->Running()) return;
  process_.reset();
  // The old listener's port is normally free at once; allow a short grace for the kernel.
  const auto end = steady_clock::now() + std::chrono::seconds(10);
  while (!Launch()) {
    if (steady_clock::now() >= end) {
      throw std::runtime_error("nats-server did not restart on port " + std::to_string(port_) +
                               "; log:\n" + last_log_);
    }
    std::this_thread::sleep_for(milliseconds(100));
  }
}

void NatsServer::Kill() {
  if (!process_) return;
  process_->Kill();
  last_log_ = process_->Log();
  process_.reset();
}

std::string NatsServer::Log() const { return process_ ? process_->Log() : last_log_; }

// ---------------------------------------------------------------------------------------------

namespace {
PostgresServer* g_shared_postgres = nullptr;
}  // namespace

PostgresServer& PostgresServer::Shared() {
  static std::mutex mu;
  std::lock_guard lock(mu);
  if (g_shared_postgres == nullptr) {
    const char* admin = std::getenv("EVP_TEST_POSTGRES_ADMIN_DSN");
    if (admin != nullptr && *admin != '\0') {
      g_shared_postgres = new PostgresServer(std::string(admin));
    } else {
      g_shared_postgres = new PostgresServer(OwnedTag{});
    }
    // Registered after the constructor used libpqxx, so this runs before libpqxx's own
    // static objects are destroyed at exit (atexit and static destructors run in reverse).
    std::atexit([] {
      delete g_shared_postgres;
      g_shared_postgres = nullptr;
    });
  }
  return *g_shared_postgres;
}

std::unique_ptr<PostgresServer> StartPrivatePostgres() {
  return std::unique_ptr<PostgresServer>(new PostgresServer(PostgresServer::OwnedTag{}));
}

PostgresServer::PostgresServer(std::string admin_dsn) : external_admin_dsn_(std::move(admin_dsn)) {
  port_ = PortOfDsn(external_admin_dsn_);
  CreateDatabase();
}

PostgresServer::PostgresServer(OwnedTag) : owned_(true), dir_(MakeTempDir("evp-pg-")) {
  try {
    if (::geteuid() == 0) {
      run_as_ = "postgres";
      OsUser pg = LookupUser(run_as_);
      if (::chown(dir_.c_str(), pg.uid, pg.gid) != 0) ThrowErrno("chown " + dir_);
    }
    ChildProcess initdb(PgBinDir() + "/initdb",
                        {"-D", dir_ + "/data", "--auth=trust", "-U", "postgres", "--encoding=UTF8",
                         "--locale=C", "--no-sync", "--no-instructions"},
                        {}, run_as_);
    auto rc = initdb.Wait(kStartDeadline);
    if (rc != 0) {
      throw std::runtime_error("initdb failed (" + (rc ? std::to_string(*rc) : "timeout") + "):\n" +
                               initdb.Log());
    }
    bool started = false;
    for (int attempt = 0; attempt < 5 && !started; ++attempt) {
      port_ = FreeTcpPort();
      started = Launch();
    }
    if (!started) throw std::runtime_error("PostgreSQL did not start");
    CreateDatabase();
  } catch (...) {
    postmaster_.reset();
    RemoveTree(dir_);
    throw;
  }
}

PostgresServer::~PostgresServer() {
  if (owned_) {
    if (postmaster_) {
      postmaster_->Signal(SIGQUIT);  // immediate shutdown: the cluster is thrown away
      if (!postmaster_->Wait(kStopDeadline)) postmaster_->Kill();
      postmaster_.reset();
    }
    if (!KeepTestDirs()) RemoveTree(dir_);
    return;
  }
  try {
    pqxx::connection conn(AdminDsn());
    pqxx::nontransaction tx(conn);
    tx.exec0("DROP DATABASE IF EXISTS " + tx.quote_name(database_) + " WITH (FORCE)");
  } catch (const std::exception& e) {
    std::cerr << "[PostgresServer] could not drop database " << database_ << ": " << e.what()
              << "\n";
  }
}

std::string PostgresServer::AdminDsn() const {
  if (!owned_) return external_admin_dsn_;
  return "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/postgres";
}

std::string PostgresServer::Dsn() const { return WithDatabase(AdminDsn(), database_); }

void PostgresServer::CreateDatabase() {
  database_ = UniqueName("evp_test");
  pqxx::connection conn(AdminDsn());
  pqxx::nontransaction tx(conn);
  tx.exec0("CREATE DATABASE " + tx.quote_name(database_));
}

bool PostgresServer::Launch() {
  postmaster_ = std::make_unique<ChildProcess>(
      PgBinDir() + "/postgres",
      std::vector<std::string>{"-D", dir_ + "/data", "-c", "port=" + std::to_string(port_), "-c",
                               "listen_addresses=127.0.0.1", "-c",
                               "unix_socket_directories=" + dir_, "-c", "fsync=off", "-c",
                               "synchronous_commit=off", "-c", "full_page_writes=off", "-c",
                               "max_connections=300"},
      std::map<std::string, std::string>{}, run_as_);
  const auto end = steady_clock::now() + kStartDeadline;
  while (steady_clock::now() < end) {
    if (PostgresAccepts(AdminDsn())) return true;
    if (!postmaster_->Running()) {
      std::cerr << "[PostgresServer] postgres exited on port " << port_ << ":\n"
                << postmaster_->Log() << "\n";
      postmaster_.reset();
      return false;
    }
    std::this_thread::sleep_for(kProcessPoll);
  }
  std::string log = postmaster_->Log();
  postmaster_.reset();
  throw std::runtime_error("PostgreSQL not ready within 60 s; log:\n" + log);
}

bool PostgresServer::Running() const { return postmaster_ != nullptr && postmaster_->Running(); }

void PostgresServer::Stop() {
  if (!owned_) throw std::logic_error("PostgresServer::Stop on a server this process does not own");
  if (!postmaster_) return;
  postmaster_->Signal(SIGINT);  // fast shutdown, as pg_ctl stop -m fast
  if (!postmaster_->Wait(kStopDeadline)) postmaster_->Kill();
  postmaster_.reset();
}

void PostgresServer::Start() {
  if (!owned_) {
    throw std::logic_error("PostgresServer::Start on a server this process does not own");
  }
  if (Running()) return;
  postmaster_.reset();
  const auto end = steady_clock::now() + std::chrono::seconds(10);
  while (!Launch()) {
    if (steady_clock::now() >= end) {
      throw std::runtime_error("PostgreSQL did not restart on port " + std::to_string(port_));
    }
    std::this_thread::sleep_for(milliseconds(100));
  }
}

}  // namespace evp::testing
