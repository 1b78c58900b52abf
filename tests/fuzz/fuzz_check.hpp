#pragma once
// Helpers shared by the libFuzzer targets: an invariant check that aborts (libFuzzer records
// the input as a crash) and text predicates. Header-only, no state.
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "core/text.hpp"

namespace evp::fuzz {

// A broken invariant is a finding: print it and abort so libFuzzer saves the input.
[[noreturn]] inline void Fail(const char* what, std::string_view detail = {}) {
  std::fprintf(stderr, "INVARIANT BROKEN: %s: %.*s\n", what, static_cast<int>(detail.size()),
               detail.data());
  std::abort();
}

inline void Check(bool ok, const char* what, std::string_view detail = {}) {
  if (!ok) Fail(what, detail);
}

inline bool IsControl(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u < 0x20 || u == 0x7f;
}

inline bool HasControl(std::string_view s) {
  for (char c : s) {
    if (IsControl(c)) return true;
  }
  return false;
}

// Text safe to show: valid UTF-8 (core/text) without C0 or C1 control characters or DEL.
inline bool IsPrintableText(std::string_view s) {
  if (!IsValidUtf8(s)) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto u = static_cast<unsigned char>(s[i]);
    if (IsControl(s[i])) return false;
    // C1 controls, U+0080-U+009F: 0xC2 0x80-0x9F.
    if (u == 0xC2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) < 0xA0) return false;
  }
  return true;
}

}  // namespace evp::fuzz
