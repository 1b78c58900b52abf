#pragma once
// Mutations as the pipeline builds them, for tests that drive the PostgreSQL store directly.
// Header-only: the test executables that include it link the handlers library.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "handlers/mutation.hpp"

namespace evp::testing {

// The ops schema and tenant schema prefix of the store under test (the defaults).
inline constexpr const char* kOpsSchema = "events_ops";
inline constexpr const char* kTenantPrefix = "tenant_";

// A realtime messages.upsert of `message_id` (chat c1, agent a1, outbound: no onboarding)
// carrying `text`, with version (1000 + seq, realtime, seq).
inline handlers::Mutation MessageUpsert(const std::string& tenant, const std::string& message_id,
                                        uint64_t seq, const std::string& text) {
  const nlohmann::json doc = {{"message_id", message_id}, {"chat_id", "c1"},
                              {"agent_id", "a1"},         {"flow", "OUT"},
                              {"message_text", text},     {"message_timestamp", 1000 + seq}};
  return handlers::BuildMutation(EventType::kMessagesUpsert, doc, tenant,
                                 Version{static_cast<int64_t>(1000 + seq), Source::kRealtime, seq});
}

}  // namespace evp::testing
