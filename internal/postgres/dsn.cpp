#include "postgres/dsn.hpp"

#include <libpq-fe.h>

#include <charconv>
#include <string_view>

namespace evp::postgres {

namespace {

// A port option: one port, or a comma-separated list for several hosts; empty = default.
bool ValidPorts(std::string_view ports) {
  while (!ports.empty()) {
    const size_t comma = ports.find(',');
    const std::string_view one = ports.substr(0, comma);
    int port = 0;
    const auto [end, ec] = std::from_chars(one.data(), one.data() + one.size(), port);
    if (!one.empty() &&
        (ec != std::errc() || end != one.data() + one.size() || port < 1 || port > 65535)) {
      return false;
    }
    if (comma == std::string_view::npos) break;
    ports.remove_prefix(comma + 1);
  }
  return true;
}

// libpq quotes the offending part of the string: keep it when it is a plain word (an option
// name) or punctuation ("="), hide it otherwise (it may be "user:password@host").
std::string MaskQuoted(const std::string& message) {
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t open = message.find('"', pos);
    const size_t close = open == std::string::npos ? open : message.find('"', open + 1);
    if (close == std::string::npos) break;
    const std::string_view inner(message.data() + open + 1, close - open - 1);
    const bool word =
        inner.find_first_not_of("abcdefghijklmnopqrstuvwxyz_") == std::string_view::npos;
    const bool symbols =
        inner.find_first_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") ==
        std::string_view::npos;
    out.append(message, pos, open + 1 - pos);
    out += word || symbols ? std::string(inner) : std::string("...");
    out += '"';
    pos = close + 1;
  }
  out.append(message, pos, std::string::npos);
  return out;
}

}  // namespace

std::string DsnError(const std::string& dsn) {
  char* err = nullptr;
  PQconninfoOption* options = PQconninfoParse(dsn.c_str(), &err);
  if (options == nullptr) {
    std::string message = err != nullptr ? err : "cannot be parsed (out of memory?)";
    if (err != nullptr) PQfreemem(err);
    while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) {
      message.pop_back();
    }
    return MaskQuoted(message);
  }
  std::string problem;
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (std::string_view(o->keyword) == "port" && o->val != nullptr && !ValidPorts(o->val)) {
      problem = "invalid port number (must be 1-65535)";
    }
  }
  PQconninfoFree(options);
  return problem;
}

}  // namespace evp::postgres
