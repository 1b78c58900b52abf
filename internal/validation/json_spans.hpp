#pragma once
// The exact text of parts of a JSON document: the elements of one array member of an object,
// so that a bad history item is recorded with its own original bytes rather than a
// re-serialisation (SPEC §6/§11: exact original bytes); and the value of one member, so that
// a free-form object is stored with its numbers as sent (the parser holds them as doubles).
//
// Thread-safety: pure function; safe to call concurrently.
#include <optional>
#include <string_view>
#include <vector>

namespace evp::validation {

// For a document that nlohmann::json has already parsed successfully: the byte spans of the
// elements of the array held by the top-level member `key` (the last one, if the key
// repeats, as the parser keeps the last). std::nullopt when the text is not an object with
// such an array member; callers then fall back to a re-serialisation.
std::optional<std::vector<std::string_view>> ArrayElementSpans(std::string_view doc,
                                                               std::string_view key);

// For a history envelope the parser refused as a whole (an item with invalid UTF-8, a lone
// surrogate escape, nesting that only the envelope takes past the limit, a syntax error
// inside one item): the spans of the array's elements when the text is one object whose
// members are that array `key` and at most `company_id` (each once), whose brackets and
// strings balance, with only whitespace around it. Each element can then be parsed and
// judged alone, so that one bad item does not sink the others. std::nullopt when the text
// does not have that shape.
struct SalvagedEnvelope {
  std::vector<std::string_view> elements;
  std::optional<std::string_view> company_id;  // the member's raw value, when present
};
std::optional<SalvagedEnvelope> SalvageArrayElementSpans(std::string_view doc,
                                                         std::string_view key);

// For a document that nlohmann::json has already parsed successfully: the exact text of the
// value of its top-level member `key` (the last one, if the key repeats). std::nullopt when
// the text is not an object with that member.
std::optional<std::string_view> MemberSpan(std::string_view doc, std::string_view key);

}  // namespace evp::validation
