#pragma once
// Text helpers for values that come from the outside world and must be stored as PostgreSQL
// text or shown to operators. Pure, thread-safe.
#include <string>
#include <string_view>

namespace evp {

// Valid UTF-8 without NUL: invalid sequences become U+FFFD, NUL becomes U+FFFD.
std::string SafeUtf8(std::string_view in);
bool IsValidUtf8(std::string_view in);
// For messages about untrusted text (logs, reasons): valid UTF-8 characters as they are,
// control characters and invalid bytes as '?'; after `max_bytes` (at a character boundary)
// "..." ends it.
std::string Shown(std::string_view in, size_t max_bytes);
std::string HexEncode(std::string_view bytes);
std::string HexDecode(std::string_view hex);  // input must be valid lower/upper hex
// ASCII letters lowered, other bytes as they are (tenant ids: schema names, case collisions).
std::string LowerAscii(std::string_view in);

}  // namespace evp
