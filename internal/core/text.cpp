#include "core/text.hpp"

namespace evp {
namespace {

// Length of the valid UTF-8 sequence starting at s[i], or 0 when invalid.
size_t ValidSequence(std::string_view s, size_t i) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t len = 0;
  uint32_t cp = 0;
  if ((c & 0xE0) == 0xC0) {
    len = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
      cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    return 0;
  }
  return len;
}

}  // namespace

bool IsValidUtf8(std::string_view in) {
  for (size_t i = 0; i < in.size();) {
    size_t n = ValidSequence(in, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string SafeUtf8(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size();) {
    size_t n = ValidSequence(in, i);
    if (n == 0 || in[i] == '\0') {
      out += "\xEF\xBF\xBD";
      i += n == 0 ? 1 : n;
      continue;
    }
    out.append(in.substr(i, n));
    i += n;
  }
  return out;
}

std::string Shown(std::string_view in, size_t max_bytes) {
  std::string out;
  size_t i = 0;
  while (i < in.size() && i < max_bytes) {
    const size_t n = ValidSequence(in, i);
    const auto c = static_cast<unsigned char>(in[i]);
    // C1 controls (U+0080-U+009F) are two bytes starting 0xC2 0x80-0x9F.
    const bool control = n == 1
                             ? (c < 0x20 || c == 0x7f)
                             : n == 2 && c == 0xC2 && static_cast<unsigned char>(in[i + 1]) < 0xA0;
    if (n == 0 || control) {
      out += '?';
      i += n == 0 ? 1 : n;  // one '?' per invalid byte or control character
      continue;
    }
    out.append(in.substr(i, n));
    i += n;
  }
  if (i < in.size()) out += "...";
  return out;
}

std::string HexEncode(std::string_view bytes) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.resize(bytes.size() * 2);
  for (size_t i = 0; i < bytes.size(); ++i) {
    auto c = static_cast<unsigned char>(bytes[i]);
    out[2 * i] = kHex[c >> 4];
    out[2 * i + 1] = kHex[c & 0xF];
  }
  return out;
}

std::string HexDecode(std::string_view hex) {
  auto val = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return 0;
  };
  std::string out;
  out.resize(hex.size() / 2);
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out[i / 2] = static_cast<char>((val(hex[i]) << 4) | val(hex[i + 1]));
  }
  return out;
}

std::string LowerAscii(std::string_view in) {
  std::string out(in);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

}  // namespace evp
