#pragma once
// The HTTP endpoints of both binaries: GET /healthz (liveness), GET /readyz (readiness with
// a JSON detail), GET /metrics (Prometheus text format). Runs its own threads.
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "observability/metrics.hpp"

namespace httplib {
class Server;
}

namespace evp::observability {

struct Readiness {
  bool ready = false;
  std::string detail_json;  // e.g. {"nats":true,"postgres":false,"consumers":true}
};

// Serves the three endpoints on cpp-httplib's worker threads: `readiness` is called from
// them, possibly several at once, so it must be thread-safe. It is called for each /readyz
// and each /metrics request, and sets the evp_ready gauge. Start and Stop belong to the
// owning thread.
class HttpServer {
 public:
  HttpServer(Metrics& metrics, std::function<Readiness()> readiness);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds [::]:port, IPv6 and IPv4 (0.0.0.0:port where the kernel has no IPv6; 0 = any free
  // port) and serves in a background thread.
  // Returns the bound port, or -1 when the port cannot be bound.
  int Start(int port);
  void Stop();

 private:
  Readiness Evaluate();  // the callback's answer, also set as evp_ready

  Metrics& metrics_;
  std::function<Readiness()> readiness_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace evp::observability
