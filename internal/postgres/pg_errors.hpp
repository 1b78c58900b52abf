#pragma once
// Maps pqxx exceptions to StoreError using pipeline::ClassifySqlState. Thread-safe.
#include <exception>
#include <string>

#include "pipeline/ports.hpp"

namespace evp::postgres {

// Classifies the exception currently being handled (call inside a catch block).
pipeline::StoreError ClassifyCurrentException();

}  // namespace evp::postgres
