#pragma once
// SQLSTATE -> what to do next: the only place that decides whether a database error is worth
// retrying. Pure and thread-safe, so it is unit-tested without a database.
#include <string>

#include "pipeline/ports.hpp"

namespace evp::pipeline {

// Data and integrity errors (classes 22, 23) can never succeed: fatal for that event
// (constraint_violation). Connection loss (08), shutdown (57), serialization failures and
// deadlocks (40), lock timeouts (55), resource exhaustion (53) and anything unknown are
// transient: retried with backoff, and never exhaust an event while the database is down.
StoreErrorKind ClassifySqlState(const std::string& sqlstate);

}  // namespace evp::pipeline
