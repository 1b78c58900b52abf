#include "postgres/dsn.hpp"

#include <libpq-fe.h>

#include <charconv>
#include <string_view>
#include <vector>

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

// Options that libpq reads as integers only once it connects.
bool IsIntegerOption(std::string_view keyword) {
  return keyword == "connect_timeout" || keyword == "keepalives" || keyword == "keepalives_idle" ||
         keyword == "keepalives_interval" || keyword == "keepalives_count" ||
         keyword == "tcp_user_timeout";
}

bool IsInteger(std::string_view value) {
  while (!value.empty() && value.back() == ' ') value.remove_suffix(1);
  int n = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
  return value.empty() || (ec == std::errc() && end == value.data() + value.size());
}

// Where no server listens: the value-checking start below connects here, not to the DSN's hosts.
constexpr const char* kNowhere = "/nonexistent/evp-dsn-check";

std::string TrimmedMessage(const char* message) {
  std::string out = message != nullptr ? message : "";
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// libpq checks the values of enumerated options (sslmode, gssencmode, channel_binding,
// target_session_attrs, ...) and the counts of hosts, ports and addresses only when a
// connection starts, before any traffic. Starts one against a Unix socket path where nothing
// listens (one per host, so the counts stay as they are): a failure that does not name that
// path is a value libpq refuses, a configuration error that retrying cannot mend.
std::string OptionValueError(PQconninfoOption* options) {
  std::vector<const char*> keywords;
  std::vector<std::string> values;
  std::string hosts = kNowhere;
  bool hostaddr = false;
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    const std::string_view keyword(o->keyword);
    if (keyword == "hostaddr" && *o->val != '\0') hostaddr = true;
    if (keyword == "host") {
      for (const char* c = o->val; *c != '\0'; ++c) {
        if (*c == ',') hosts += std::string(",") + kNowhere;
      }
      continue;
    }
    keywords.push_back(o->keyword);
    values.emplace_back(o->val);
  }
  // With hostaddr, libpq would connect to those addresses: their values are left to it.
  if (hostaddr) return "";
  keywords.push_back("host");
  values.push_back(hosts);
  std::vector<const char*> value_ptrs;
  value_ptrs.reserve(values.size() + 1);
  for (const auto& v : values) value_ptrs.push_back(v.c_str());
  keywords.push_back(nullptr);
  value_ptrs.push_back(nullptr);
  PGconn* conn = PQconnectStartParams(keywords.data(), value_ptrs.data(), 0);
  if (conn == nullptr) return "";
  std::string problem;
  if (PQstatus(conn) == CONNECTION_BAD) {
    const std::string message = TrimmedMessage(PQerrorMessage(conn));
    if (message.find(kNowhere) == std::string::npos) problem = MaskQuoted(message);
  }
  PQfinish(conn);
  return problem;
}

}  // namespace

std::string DsnError(const std::string& dsn) {
  char* err = nullptr;
  PQconninfoOption* options = PQconninfoParse(dsn.c_str(), &err);
  if (options == nullptr) {
    std::string message = err != nullptr ? err : "cannot be parsed (out of memory?)";
    if (err != nullptr) PQfreemem(err);
    return MaskQuoted(TrimmedMessage(message.c_str()));
  }
  std::string problem;
  for (PQconninfoOption* o = options; o->keyword != nullptr && problem.empty(); ++o) {
    if (o->val == nullptr) continue;
    const std::string_view keyword(o->keyword);
    if (keyword == "port" && !ValidPorts(o->val)) {
      problem = "invalid port number (must be 1-65535)";
    } else if (IsIntegerOption(keyword) && !IsInteger(o->val)) {
      problem = "invalid " + std::string(keyword) + " value (must be an integer)";
    }
  }
  if (problem.empty()) problem = OptionValueError(options);
  PQconninfoFree(options);
  return problem;
}

}  // namespace evp::postgres
