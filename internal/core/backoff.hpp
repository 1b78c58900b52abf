#pragma once
// Exponential backoff with jitter, shared by redelivery (NAK) delays and DLQ retries.
// Pure: the caller owns the random generator (seed it in tests).
#include <algorithm>
#include <chrono>
#include <random>

namespace evp {

// attempt 1 -> about base, 2 -> about 2*base, ... capped at cap. "Equal jitter": the delay is
// uniformly drawn from [d/2, d], so retries spread out but never collapse to zero.
inline std::chrono::milliseconds BackoffDelay(std::chrono::milliseconds base,
                                              std::chrono::milliseconds cap, int attempt,
                                              std::mt19937_64& rng) {
  int64_t d = base.count();
  for (int i = 1; i < attempt && d < cap.count(); ++i) d *= 2;
  d = std::min(d, cap.count());
  if (d <= 1) return std::chrono::milliseconds(d);
  std::uniform_int_distribution<int64_t> dist(d / 2, d);
  return std::chrono::milliseconds(dist(rng));
}

}  // namespace evp
