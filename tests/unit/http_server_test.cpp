// The HTTP endpoints' listening socket: one process per port.
#include "observability/http_server.hpp"

#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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

}  // namespace
}  // namespace evp::observability
