#include "core/duration.hpp"

#include <charconv>
#include <limits>

namespace evp {

std::optional<std::chrono::milliseconds> ParseDuration(std::string_view text) {
  int64_t value = 0;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(begin, end, value);
  if (ec != std::errc() || ptr == begin || value < 0) return std::nullopt;
  std::string_view unit(ptr, static_cast<size_t>(end - ptr));
  int64_t factor = 0;
  if (unit.empty() && value == 0) {
    return std::chrono::milliseconds(0);  // "0" needs no unit
  } else if (unit == "ms") {
    factor = 1;
  } else if (unit == "s") {
    factor = 1000;
  } else if (unit == "m") {
    factor = 60'000;
  } else if (unit == "h") {
    factor = 3'600'000;
  } else {
    return std::nullopt;
  }
  if (value > std::numeric_limits<int64_t>::max() / factor) return std::nullopt;
  return std::chrono::milliseconds(value * factor);
}

std::string FormatDuration(std::chrono::milliseconds d) {
  const int64_t ms = d.count();
  if (ms != 0 && ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms != 0 && ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms != 0 && ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

}  // namespace evp
