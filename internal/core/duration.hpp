#pragma once
// Parsing and printing of the duration syntax used by every *_DELAY / *_WAIT setting:
// "500ms", "6s", "5m", "1h" (one integer and one unit; a bare "0" is zero).
#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace evp {

std::optional<std::chrono::milliseconds> ParseDuration(std::string_view text);
std::string FormatDuration(std::chrono::milliseconds d);

}  // namespace evp
