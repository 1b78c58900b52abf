// The HTTP endpoints' listening socket: one process per port.
#include "observability/http_server.hpp"

#include <gtest/gtest.h>

#include "observability/metrics.hpp"

namespace evp::observability {
namespace {

Readiness AlwaysReady() { return {true, "{\"ready\":true}"}; }

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

}  // namespace
}  // namespace evp::observability
