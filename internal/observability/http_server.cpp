#include "observability/http_server.hpp"

#include <httplib.h>

namespace evp::observability {

HttpServer::HttpServer(Metrics& metrics, std::function<Readiness()> readiness)
    : metrics_(metrics),
      readiness_(std::move(readiness)),
      server_(std::make_unique<httplib::Server>()) {
  server_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  server_->Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    Readiness r = readiness_();
    res.status = r.ready ? 200 : 503;
    res.set_content(r.detail_json + "\n", "application/json");
  });
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(Serialize(metrics_.registry()), "text/plain; version=0.0.4; charset=utf-8");
  });
}

HttpServer::~HttpServer() { Stop(); }

int HttpServer::Start(int port) {
  int bound = port;
  if (port == 0) {
    bound = server_->bind_to_any_port("0.0.0.0");
  } else if (!server_->bind_to_port("0.0.0.0", port)) {
    bound = -1;
  }
  if (bound < 0) return -1;
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return bound;
}

void HttpServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace evp::observability
