#pragma once
// UTF-8 helpers for untrusted bytes: validation (RFC 3629: no overlong forms, no surrogates,
// nothing above U+10FFFF) and truncation that never splits a character. Pure functions.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace evp::validation {

// Length (1-4) of the well-formed UTF-8 sequence starting at `pos`, or 0 when the bytes there
// are not one. Requires pos < text.size().
size_t Utf8SequenceLength(std::string_view text, size_t pos);

// Offset of the first byte that is not part of well-formed UTF-8, or std::nullopt.
std::optional<size_t> FindInvalidUtf8(std::string_view text);

// `text` shortened to at most `max_bytes` bytes (max_bytes >= 3), ending with "..." when
// something was cut; never splits a character. Ill-formed bytes become '?' and control
// characters (U+0000-U+001F, U+007F) become '?', so the result is always printable UTF-8.
std::string SanitizeUtf8(std::string_view text, size_t max_bytes);

}  // namespace evp::validation
