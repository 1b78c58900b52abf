#pragma once
// Turning the exact bytes of an event into a validated JSON document, with the failure
// reasons of SPEC §10/§11 (too_large, malformed_json, schema_violation). Untrusted input
// never throws out of these functions: every problem is a Failure.
//
// Thread-safety: pure functions; safe to call concurrently.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

#include "core/event.hpp"
#include "core/result.hpp"
#include "validation/schema_registry.hpp"

namespace evp::validation {

// Deeper documents are malformed_json: free-form objects may nest deeply (the SPEC bounds
// them only by size), but nothing legitimate nests this deep, and a bound keeps every
// recursive consumer (nlohmann's dump, PostgreSQL's jsonb parser, which gives up near 20,000
// levels) safe from "[[[[..." bombs.
inline constexpr size_t kMaxJsonDepth = 1000;
// Event timestamps may run ahead of our clock by at most this much (publisher clock skew).
inline constexpr int64_t kMaxFutureSeconds = 24 * 60 * 60;

// Parses the exact bytes of an event. Order of checks: size > max_bytes -> kTooLarge
// ("event is N bytes, limit is M"); empty or whitespace-only -> kMalformedJson; invalid UTF-8
// anywhere -> kMalformedJson; nesting deeper than kMaxJsonDepth -> kMalformedJson; JSON
// syntax error -> kMalformedJson (message with byte offset, no payload excerpt); otherwise
// the parsed document (any JSON value: a non-object is ValidateEvent's schema_violation).
Result<nlohmann::json, Failure> DecodeEvent(std::string_view bytes, size_t max_bytes);

// Schema validation of a decoded event plus the rules JSON Schema cannot say:
// - a timestamp field (conversation_timestamp, message_timestamp, timestamp) more than 24 h
//   after now_unix: "/message_timestamp: more than 24h in the future";
// - a U+0000 character in any string or key (PostgreSQL text and jsonb cannot store it, and
//   it would hide the rest of a string from length checks).
// Returns std::nullopt when valid, else a Failure with code kSchemaViolation.
//
// may_hold_nul = false skips the U+0000 walk: for documents parsed from bytes that do not
// contain the escape "\u0000" (the only way JSON text can carry U+0000).
//
// For history types only the envelope is checked; validate each item alone with
// ValidateEvent(reg, HistoryItemType(type), item, now_unix).
//
// `checked_tenant`: see SchemaRegistry::Validate.
std::optional<Failure> ValidateEvent(const SchemaRegistry& reg, EventType type,
                                     const nlohmann::json& doc, int64_t now_unix,
                                     bool may_hold_nul = true,
                                     std::string_view checked_tenant = {});

}  // namespace evp::validation
