#pragma once
// Realistic sample payloads of every v1 event type, for eventctl publish and load generation.
// Pure and deterministic for a given seed; thread-safe.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "core/event.hpp"

namespace evp::handlers {

struct SampleOptions {
  uint64_t seed = 1;      // varies ids and texts
  int64_t now_unix = 0;   // timestamps are based on it
  int history_items = 3;  // items in history samples
};

nlohmann::json SamplePayload(EventType type, const std::string& company_id,
                             const SampleOptions& options);

}  // namespace evp::handlers
