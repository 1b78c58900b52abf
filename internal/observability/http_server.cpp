#include "observability/http_server.hpp"

#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>

namespace evp::observability {

namespace {
constexpr size_t kHttpThreads = 32;
}  // namespace

HttpServer::HttpServer(Metrics& metrics, std::function<Readiness()> readiness)
    : metrics_(metrics),
      readiness_(std::move(readiness)),
      server_(std::make_unique<httplib::Server>()) {
  // cpp-httplib sets SO_REUSEPORT, with which a second process binds the same port and the
  // kernel splits probes and scrapes between the two. SO_REUSEADDR alone still lets a
  // restarted process bind at once, while a port in use is an error.
  server_->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    // Dual stack: the IPv6 wildcard takes IPv4 too, whatever net.ipv6.bindv6only says.
    // (Fails harmlessly on the IPv4 socket of the fallback.)
    int no = 0;
    setsockopt(sock, IPPROTO_IPV6, IPV6_V6ONLY, &no, sizeof(no));
  });
  // Each connection holds a worker thread while it waits for a request. cpp-httplib's
  // defaults (8 threads here, 5 s of waiting) let 8 idle connections stall liveness probes
  // for 5 s, and a probe that times out restarts a healthy pod. An idle connection is now
  // dropped after 1 s, and it takes kHttpThreads of them at once to delay an answer.
  server_->new_task_queue = [] { return new httplib::ThreadPool(kHttpThreads); };
  server_->set_keep_alive_timeout(1);
  server_->set_read_timeout(2);
  server_->set_write_timeout(2);
  server_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  server_->Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    Readiness r = Evaluate();
    res.status = r.ready ? 200 : 503;
    res.set_content(r.detail_json + "\n", "application/json");
  });
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    // evp_ready as of this scrape, whether or not anything probes /readyz.
    Evaluate();
    res.set_content(Serialize(metrics_.registry()), "text/plain; version=0.0.4; charset=utf-8");
  });
}

HttpServer::~HttpServer() { Stop(); }

Readiness HttpServer::Evaluate() {
  Readiness r = readiness_();
  metrics_.ready().Set(r.ready ? 1 : 0);
  return r;
}

int HttpServer::Start(int port) {
  // IPv6 and IPv4 on one socket, so probes and scrapes reach the pod on IPv6-only and
  // dual-stack clusters; IPv4 alone where the kernel has no IPv6.
  auto bind = [&](const char* host) {
    if (port == 0) return server_->bind_to_any_port(host);
    return server_->bind_to_port(host, port) ? port : -1;
  };
  // (A port in use fails both: the dual-stack socket holding it covers IPv4 as well.)
  int bound = bind("::");
  if (bound < 0) bound = bind("0.0.0.0");
  if (bound < 0) return -1;
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  // Stop() before the loop runs would be lost (the loop then never ends): wait for it.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!server_->is_running() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return bound;
}

void HttpServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace evp::observability
