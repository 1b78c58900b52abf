// The metrics registry: which series exist before the first event, and which never do.
#include "observability/metrics.hpp"

#include <gtest/gtest.h>

namespace evp::observability {
namespace {

TEST(Metrics, TheTenantsOfMetricsTenantsAreCountedFromZeroSoTheirFirstEventShowsInRate) {
  Metrics metrics("events-processor", {"acme", "beta"});
  const std::string before = Serialize(metrics.registry());
  for (const char* tenant : {"acme", "beta"}) {
    for (const char* outcome : {"applied", "stale_skipped", "dead_lettered"}) {
      const std::string series = std::string("evp_tenant_events_total{company_id=\"") + tenant +
                                 "\",outcome=\"" + outcome + "\"} 0";
      EXPECT_NE(before.find(series), std::string::npos) << series << "\n" << before;
    }
  }

  metrics.CountEvent("chats.upsert", EventOutcome::kApplied, "acme");
  metrics.CountEvent("chats.upsert", EventOutcome::kApplied, "gamma");
  const std::string after = Serialize(metrics.registry());
  EXPECT_NE(after.find(R"(evp_tenant_events_total{company_id="acme",outcome="applied"} 1)"),
            std::string::npos)
      << after;
  EXPECT_EQ(after.find(R"(company_id="gamma")"), std::string::npos) << after;
}

TEST(Metrics, WithoutMetricsTenantsNoSeriesCarriesATenant) {
  Metrics metrics("events-processor");
  metrics.CountEvent("chats.upsert", EventOutcome::kApplied, "acme");
  const std::string text = Serialize(metrics.registry());
  EXPECT_EQ(text.find("company_id"), std::string::npos) << text;
  EXPECT_NE(text.find(R"(evp_events_total{outcome="applied",type="chats.upsert"} 1)"),
            std::string::npos)
      << text;
}

}  // namespace
}  // namespace evp::observability
