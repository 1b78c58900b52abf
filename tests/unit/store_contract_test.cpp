// The EventStore contract (support/store_contract.hpp) on the in-memory fake that the
// pipeline's unit tests use; integration/store_contract_test.cpp runs it on PostgreSQL.
#include "support/store_contract.hpp"

#include <optional>
#include <string>

#include "fakes.hpp"

namespace evp::testing {
namespace {

class InMemoryHarness {
 public:
  pipeline::EventStore& Store() { return store_; }
  std::string NewTenant(const std::string& stem) { return stem; }
  std::optional<std::string> Text(const std::string& tenant, handlers::Table table,
                                  const std::string& key, const std::string& column) {
    return store_.Column(tenant, table, key, column);
  }
  void RefuseMessage(const std::string& tenant, const std::string& message_id) {
    store_.fatal_key = {tenant, "message_id=" + message_id};
  }
  size_t OnboardingLogRows(const std::string& tenant) {
    size_t n = 0;
    for (const auto& [company, agent, phone] : store_.OnboardingLog()) n += company == tenant;
    return n;
  }

 private:
  InMemoryEventStore store_;
};

INSTANTIATE_TYPED_TEST_SUITE_P(StoreContractInMemory, EventStoreContract,
                               ::testing::Types<InMemoryHarness>);

}  // namespace
}  // namespace evp::testing
