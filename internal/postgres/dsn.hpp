#pragma once
// Checks a PostgreSQL connection string before any connection is tried, so that a typo is a
// configuration error at start, not an endless "PostgreSQL not ready" retry.
#include <string>

namespace evp::postgres {

// Empty when libpq accepts `dsn` (URI or key=value form) and the values of its options
// (ports 1-65535, integers where libpq wants them, sslmode and the other enumerated options
// as libpq itself checks them without reaching a server); else what is wrong, without echoing
// the string (it may hold a password).
std::string DsnError(const std::string& dsn);

}  // namespace evp::postgres
