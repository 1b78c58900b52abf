#pragma once
// SchemaRegistry: the v1 JSON Schemas (schemas/v1/<type>.json, the publishers' contract),
// parsed once at load, and validation of one document against the schema of an event type
// with a short, deterministic message naming the first failing field and rule.
//
// Thread-safety: immutable after loading; Validate() may be called concurrently from any
// number of threads. Movable, not copyable.
#include <array>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "core/event.hpp"
#include "core/result.hpp"

namespace evp::validation {

// Messages returned by Validate() never exceed this many bytes (they end up in logs and in
// exhausted_events.reason; payload values are never quoted, only field names).
inline constexpr size_t kMaxMessageBytes = 300;

class SchemaRegistry {
 public:
  // Builds from the schemas compiled into the binary (evp::EmbeddedSchemas(), paths like
  // "v1/chats.upsert.json"). Every event type must have a schema. The error names the file
  // and the problem.
  static Result<SchemaRegistry, std::string> LoadEmbedded();
  // Same, from files on disk: `dir` contains v1/<type>.json (e.g. the repository's schemas/).
  static Result<SchemaRegistry, std::string> LoadFromDirectory(const std::filesystem::path& dir);

  SchemaRegistry(SchemaRegistry&&) noexcept;
  SchemaRegistry& operator=(SchemaRegistry&&) noexcept;
  SchemaRegistry(const SchemaRegistry&) = delete;
  SchemaRegistry& operator=(const SchemaRegistry&) = delete;
  ~SchemaRegistry();

  // Validates one document against the v1 schema of `type`. std::nullopt when valid, else
  // one message "<json pointer>: <rule>", e.g. "/chat_id: required property missing",
  // "/unread_count: must be >= 0", "/foo: unknown property (additionalProperties is false)",
  // "(root): expected object, got array". The most specific (deepest) error wins; among
  // equally deep ones a type mismatch wins, then the first reported. Never throws.
  //
  // For history types only the envelope is checked: validate each array item alone against
  // HistoryItemType(type), so that one bad item does not reject the batch.
  //
  // `checked_tenant`, when not empty, must be a tenant id known to satisfy the tenant rule
  // (SPEC §4; the subject's tenant once routing accepted it). A company_id equal to it is
  // then not checked against the schema's pattern again; the result is the same.
  std::optional<std::string> Validate(EventType type, const nlohmann::json& doc,
                                      std::string_view checked_tenant = {}) const;

  // The schema document of `type` as loaded (for tooling that prints the contract).
  const nlohmann::json& SchemaDocument(EventType type) const;

 private:
  struct Entry;  // keeps valijson out of this header
  SchemaRegistry();
  // Parses one schema into entries_; the error names the problem (the caller adds the file).
  std::optional<std::string> Load(EventType type, std::string_view content);

  std::array<std::unique_ptr<Entry>, kAllEventTypes.size()> entries_;
};

// Renders path segments as a JSON pointer (RFC 6901: "~" -> "~0", "/" -> "~1"), "(root)" for
// an empty path. Safe to log: control characters become '?', and segments longer than 64
// bytes are shortened (at a UTF-8 character boundary) with "...".
std::string FormatJsonPointer(std::span<const std::string> segments);

}  // namespace evp::validation
