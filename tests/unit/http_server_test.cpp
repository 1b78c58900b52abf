// The HTTP endpoints' listening socket: one process per port.
#include "observability/http_server.hpp"

#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <vector>

#include "observability/metrics.hpp"

namespace evp::observability {
namespace {

Readiness AlwaysReady() { return {true, "{\"ready\":true}"}; }

bool HasIpv6Loopback() {
  const int fd = socket(AF_INET6, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_addr = in6addr_loopback;
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

TEST(HttpServer, APortInUseIsAnErrorNotASharedListener) {
  Metrics metrics("test");
  HttpServer first(metrics, AlwaysReady);
  const int port = first.Start(0);
  ASSERT_GT(port, 0);
  HttpServer second(metrics, AlwaysReady);
  EXPECT_EQ(second.Start(port), -1) << "a second listener on port " << port;
  // Once the first one stops, the port can be taken again at once (a restart).
  first.Stop();
  HttpServer third(metrics, AlwaysReady);
  EXPECT_EQ(third.Start(port), port);
}

TEST(HttpServer, AScrapeSeesReadinessAsOfThatMomentWithoutAProbe) {
  // Without readiness probes (make run, systemd), evp_ready must not keep a stale value.
  Metrics metrics("test");
  std::atomic<bool> ready{false};
  HttpServer server(metrics, [&]() -> Readiness {
    return {ready.load(), ready.load() ? "{\"ready\":true}" : "{\"ready\":false}"};
  });
  const int port = server.Start(0);
  ASSERT_GT(port, 0);
  httplib::Client client("127.0.0.1", port);
  auto scrape = [&] {
    auto r = client.Get("/metrics");
    return r ? r->body : std::string();
  };
  EXPECT_NE(scrape().find("\nevp_ready 0\n"), std::string::npos);
  ready = true;
  EXPECT_NE(scrape().find("\nevp_ready 1\n"), std::string::npos);
  ready = false;
  EXPECT_NE(scrape().find("\nevp_ready 0\n"), std::string::npos);
}

TEST(HttpServer, AnswersOverIPv4AndIPv6) {
  Metrics metrics("test");
  HttpServer server(metrics, AlwaysReady);
  const int port = server.Start(0);
  ASSERT_GT(port, 0);
  httplib::Client v4("127.0.0.1", port);
  auto r4 = v4.Get("/healthz");
  ASSERT_TRUE(r4) << "IPv4";
  EXPECT_EQ(r4->status, 200);
  if (!HasIpv6Loopback()) return;  // the kernel has no IPv6: the IPv4 fallback answered above
  httplib::Client v6("::1", port);
  auto r6 = v6.Get("/readyz");
  ASSERT_TRUE(r6) << "IPv6";
  EXPECT_EQ(r6->status, 200);
}

// Idle connections (a client that connects and sends nothing, or keeps a connection open
// between scrapes) each held one of 8 threads for 5 s: 8 of them stalled liveness probes.
TEST(HttpServer, IdleConnectionsDoNotStallProbes) {
  Metrics metrics("test");
  HttpServer server(metrics, AlwaysReady);
  const int port = server.Start(0);
  ASSERT_GT(port, 0);
  std::vector<int> idle;
  for (int i = 0; i < 16; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    idle.push_back(fd);
  }
  // A kubelet probe gives up after its timeoutSeconds (3 s in the chart).
  httplib::Client probe("127.0.0.1", port);
  probe.set_connection_timeout(3);
  probe.set_read_timeout(3);
  auto r = probe.Get("/healthz");
  ASSERT_TRUE(r) << "no answer within 3 s: " << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  // The server drops an idle connection after a second; it reads end-of-file then.
  char byte = 0;
  timeval wait{.tv_sec = 10, .tv_usec = 0};
  setsockopt(idle[0], SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
  EXPECT_EQ(read(idle[0], &byte, 1), 0) << "the idle connection was not closed by the server";
  for (int fd : idle) close(fd);
}

}  // namespace
}  // namespace evp::observability
