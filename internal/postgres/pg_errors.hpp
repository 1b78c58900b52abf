#pragma once
// SQLSTATE -> what to do next. The only place that decides whether a database error is worth
// retrying. Thread-safe (pure).
#include <exception>
#include <string>

#include "pipeline/ports.hpp"

namespace evp::postgres {

// Data and integrity errors (classes 22, 23) can never succeed: fatal for that event.
// Connection loss, shutdown, serialization failures, deadlocks, lock timeouts, resource
// exhaustion and anything unknown are transient: retried with backoff.
pipeline::StoreErrorKind ClassifySqlState(const std::string& sqlstate);

// Classifies the exception currently being handled (call inside a catch block).
pipeline::StoreError ClassifyCurrentException();

}  // namespace evp::postgres
