#pragma once
// Maps pqxx exceptions to StoreError using pipeline::ClassifySqlState, and tells whether the
// server closed an idle connection. Thread-safe.
#include <exception>
#include <string>
#include <string_view>

#include "pipeline/ports.hpp"

namespace evp::postgres {

// Classifies the exception currently being handled (call inside a catch block).
pipeline::StoreError ClassifyCurrentException();

// The primary line of a PostgreSQL error message, without the "ERROR:" severity and without
// the DETAIL / HINT / CONTEXT lines: DETAIL quotes whole failing rows, which must not reach
// reasons or logs. ('new row for relation "chats" violates check constraint "c"'; a data
// error's primary line may still name the one offending value, e.g. an out-of-range number.)
std::string PrimaryErrorMessage(std::string_view message);

// Whether the server sent something on an idle connection's socket, or hung up: an idle
// connection expects nothing, and a server that ends a session (a restart, an
// administrator's pg_terminate_backend, an idle timeout) sends its FATAL error and closes.
// A connection found so is replaced before use, instead of failing the next statement. No
// round trip: a poll() that does not wait.
bool ServerSpokeWhileIdle(int socket);

}  // namespace evp::postgres
