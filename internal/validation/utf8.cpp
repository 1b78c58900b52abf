#include "validation/utf8.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace evp::validation {
namespace {

bool InRange(unsigned char c, unsigned char lo, unsigned char hi) { return c >= lo && c <= hi; }

}  // namespace

size_t Utf8SequenceLength(std::string_view text, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[pos + i]); };
  const size_t left = text.size() - pos;
  const unsigned char b0 = byte(0);
  if (b0 < 0x80) return 1;
  if (InRange(b0, 0xC2, 0xDF)) {
    return left >= 2 && InRange(byte(1), 0x80, 0xBF) ? 2 : 0;
  }
  if (InRange(b0, 0xE0, 0xEF)) {
    if (left < 3) return 0;
    // E0 excludes overlong forms; ED excludes UTF-16 surrogates (U+D800-U+DFFF).
    const unsigned char lo = b0 == 0xE0 ? 0xA0 : 0x80;
    const unsigned char hi = b0 == 0xED ? 0x9F : 0xBF;
    return InRange(byte(1), lo, hi) && InRange(byte(2), 0x80, 0xBF) ? 3 : 0;
  }
  if (InRange(b0, 0xF0, 0xF4)) {
    if (left < 4) return 0;
    // F0 excludes overlong forms; F4 caps at U+10FFFF.
    const unsigned char lo = b0 == 0xF0 ? 0x90 : 0x80;
    const unsigned char hi = b0 == 0xF4 ? 0x8F : 0xBF;
    return InRange(byte(1), lo, hi) && InRange(byte(2), 0x80, 0xBF) && InRange(byte(3), 0x80, 0xBF)
               ? 4
               : 0;
  }
  return 0;  // continuation byte, C0/C1 (overlong), F5-FF
}

std::optional<size_t> FindInvalidUtf8(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    // Events are mostly ASCII: skip 8 ASCII bytes at a time.
    if (pos + 8 <= text.size()) {
      uint64_t word = 0;
      std::memcpy(&word, text.data() + pos, sizeof(word));
      if ((word & 0x8080808080808080ULL) == 0) {
        pos += 8;
        continue;
      }
    }
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const size_t len = Utf8SequenceLength(text, pos);
    if (len == 0) return pos;
    pos += len;
  }
  return std::nullopt;
}

std::string SanitizeUtf8(std::string_view text, size_t max_bytes) {
  constexpr std::string_view kEllipsis = "...";
  // Replacements are byte for byte, so the output is as long as the input.
  const bool cut = text.size() > max_bytes;
  const size_t budget = cut ? max_bytes - std::min(max_bytes, kEllipsis.size()) : text.size();
  std::string out;
  out.reserve(budget + kEllipsis.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t len = Utf8SequenceLength(text, pos);
    const auto c = static_cast<unsigned char>(text[pos]);
    if (len == 0 || c < 0x20 || c == 0x7F) {
      if (out.size() + 1 > budget) break;
      out += '?';
      ++pos;
      continue;
    }
    if (out.size() + len > budget) break;
    out.append(text.substr(pos, len));
    pos += len;
  }
  if (cut) out += kEllipsis;
  return out;
}

}  // namespace evp::validation
