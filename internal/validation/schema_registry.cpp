#include "validation/schema_registry.hpp"

// GCC 12 emits a false -Wmaybe-uninitialized inside libstdc++'s <regex> (pulled in by
// valijson) when optimising with sanitizers (GCC bug 105562); -Werror would break that build.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <cstddef>
#include <exception>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>
#include <valijson/adapters/nlohmann_json_adapter.hpp>
#include <valijson/schema.hpp>
#include <valijson/schema_parser.hpp>
#include <valijson/validation_results.hpp>
#include <valijson/validator.hpp>
#include <vector>

#include "core/embedded.hpp"
#include "validation/utf8.hpp"

namespace evp::validation {

struct SchemaRegistry::Entry {
  nlohmann::json document;
  valijson::Schema schema;  // neither copyable nor movable: the Entry lives on the heap
  // The same schema without the tenant rule on company_id, for documents whose company_id
  // is a tenant id already checked against that rule (see Validate); null when the schema
  // has no such rule.
  std::unique_ptr<valijson::Schema> without_tenant_rule;
};

namespace {

using Json = nlohmann::json;

constexpr std::string_view kDraft07 = "http://json-schema.org/draft-07/schema#";
constexpr size_t kMaxSegmentBytes = 64;

std::string SchemaPath(EventType type) {
  return "v1/" + std::string(EventTypeName(type)) + ".json";
}

// What failed, recovered from valijson's error text. valijson reports no machine-readable
// constraint kind, so its (stable, English) descriptions are matched by prefix; anything
// unrecognised is reported with valijson's own words.
enum class Rule {
  kType,
  kRequired,
  kUnknownProperty,
  kEnum,
  kMinimum,
  kMaximum,
  kMaxLength,
  kMinLength,
  kPattern,
  kMaxItems,
  kMinItems,
  kOther,
  kSummary,  // "Failed to validate item #3": a parent restating a child's error
};

struct Finding {
  std::vector<std::string> path;  // instance location, one entry per object key / array index
  Rule rule = Rule::kOther;
  std::string_view description;  // valijson's text, for kOther
};

// Among findings of equal depth: a type mismatch explains the most, summaries the least.
int Priority(Rule rule) {
  switch (rule) {
    case Rule::kType:
      return 0;
    case Rule::kOther:
      return 2;
    case Rule::kSummary:
      return 3;
    default:
      return 1;
  }
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// The quoted name in "<prefix>'name'." (the name may itself contain quotes).
std::string QuotedTail(std::string_view description, std::string_view prefix) {
  std::string_view name = description.substr(prefix.size());
  if (name.size() >= 2 && name.substr(name.size() - 2) == "'.") name.remove_suffix(2);
  return std::string(name);
}

Finding Classify(const valijson::ValidationResults::Error& error) {
  Finding f;
  for (size_t i = 0; i < error.context.size(); ++i) {
    const std::string& part = error.context[i];
    if (i == 0 && part == "<root>") continue;
    if (part.size() >= 2 && part.front() == '[' && part.back() == ']') {
      f.path.push_back(part.substr(1, part.size() - 2));
    } else {
      f.path.push_back(part);
    }
  }
  constexpr std::string_view kRequired = "Missing required property '";
  constexpr std::string_view kUnknown =
      "Object contains a property that could not be validated using 'properties' or "
      "'additionalProperties' constraints: '";
  const std::string_view d = error.description;
  if (StartsWith(d, kRequired)) {
    f.rule = Rule::kRequired;
    f.path.push_back(QuotedTail(d, kRequired));
  } else if (StartsWith(d, kUnknown)) {
    f.rule = Rule::kUnknownProperty;
    f.path.push_back(QuotedTail(d, kUnknown));
  } else if (StartsWith(d, "Value type not permitted")) {
    f.rule = Rule::kType;
  } else if (StartsWith(d, "Failed to match against any enum values")) {
    f.rule = Rule::kEnum;
  } else if (StartsWith(d, "Expected number greater than")) {
    f.rule = Rule::kMinimum;
  } else if (StartsWith(d, "Expected number less than")) {
    f.rule = Rule::kMaximum;
  } else if (StartsWith(d, "String should be no more than")) {
    f.rule = Rule::kMaxLength;
  } else if (StartsWith(d, "String should be no fewer than")) {
    f.rule = Rule::kMinLength;
  } else if (StartsWith(d, "Failed to match regex")) {
    f.rule = Rule::kPattern;
  } else if (StartsWith(d, "Array should contain no more than")) {
    f.rule = Rule::kMaxItems;
  } else if (StartsWith(d, "Array should contain no fewer than")) {
    f.rule = Rule::kMinItems;
  } else if (StartsWith(d, "Failed to validate")) {
    f.rule = Rule::kSummary;
  } else {
    f.rule = Rule::kOther;
  }
  f.description = d;
  return f;
}

std::optional<size_t> ParseIndex(const std::string& s) {
  if (s.empty() || s.size() > 18) return std::nullopt;
  size_t n = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<size_t>(c - '0');
  }
  return n;
}

// Walks the instance and its schema together along `path`; the schemas here use only
// properties / additionalProperties / items (no $ref, no combinators).
struct Location {
  const Json* value = nullptr;   // instance value at path, if it exists
  const Json* schema = nullptr;  // subschema that applies there, if known
};

Location Locate(const Json& schema, const Json& doc, const std::vector<std::string>& path) {
  Location loc{&doc, &schema};
  for (const std::string& segment : path) {
    const Json* next_schema = nullptr;
    const Json* next_value = nullptr;
    const Json* s = loc.schema;
    if (loc.value != nullptr && loc.value->is_array()) {
      if (auto index = ParseIndex(segment); index && *index < loc.value->size()) {
        next_value = &(*loc.value)[*index];
      }
      if (s != nullptr && s->is_object()) {
        if (auto it = s->find("items"); it != s->end() && it->is_object()) next_schema = &*it;
      }
    } else {
      if (loc.value != nullptr && loc.value->is_object()) {
        if (auto it = loc.value->find(segment); it != loc.value->end()) next_value = &*it;
      }
      if (s != nullptr && s->is_object()) {
        auto props = s->find("properties");
        if (props != s->end() && props->is_object() && props->contains(segment)) {
          next_schema = &(*props)[segment];
        } else if (auto ap = s->find("additionalProperties"); ap != s->end() && ap->is_object()) {
          next_schema = &*ap;
        }
      }
    }
    loc = Location{next_value, next_schema};
  }
  return loc;
}

std::string_view JsonTypeName(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return "boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "integer";
    case Json::value_t::number_float:
      return "number";
    case Json::value_t::string:
      return "string";
    case Json::value_t::array:
      return "array";
    case Json::value_t::object:
      return "object";
    default:
      return "unknown";
  }
}

// A schema keyword's value as short text ("IN, OUT" for enums, "0" for minimum).
std::string KeywordText(const Json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_array()) {
    std::string out;
    for (const Json& item : value) {
      if (!out.empty()) out += ", ";
      out += KeywordText(item);
    }
    return out;
  }
  return value.dump();
}

const Json* Keyword(const Json* schema, std::string_view name) {
  if (schema == nullptr || !schema->is_object()) return nullptr;
  auto it = schema->find(name);
  return it == schema->end() ? nullptr : &*it;
}

// valijson reads integers as int64_t, so 2^63..2^64-1 arrive as negative numbers and fail
// "minimum": name the bound they really exceed.
bool BeyondInt64(const Json* value) {
  return value != nullptr && value->is_number_unsigned() &&
         value->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
}

std::string RuleText(const Finding& f, const Location& loc) {
  const Json* s = loc.schema;
  if ((f.rule == Rule::kMinimum || f.rule == Rule::kMaximum) && BeyondInt64(loc.value)) {
    const Json* max = Keyword(s, "maximum");
    return "must be <= " + (max != nullptr ? KeywordText(*max)
                                           : std::to_string(std::numeric_limits<int64_t>::max()));
  }
  switch (f.rule) {
    case Rule::kRequired:
      return "required property missing";
    case Rule::kUnknownProperty:
      return "unknown property (additionalProperties is false)";
    case Rule::kType:
      if (const Json* type = Keyword(s, "type")) {
        std::string expected = KeywordText(*type);
        if (type->is_array()) {
          std::string joined;
          for (const Json& t : *type) joined += (joined.empty() ? "" : " or ") + KeywordText(t);
          expected = joined;
        }
        std::string text = "expected " + expected;
        if (loc.value != nullptr) text += ", got " + std::string(JsonTypeName(*loc.value));
        return text;
      }
      break;
    case Rule::kEnum:
      if (const Json* values = Keyword(s, "enum")) return "must be one of " + KeywordText(*values);
      break;
    case Rule::kMinimum:
      if (const Json* min = Keyword(s, "minimum")) return "must be >= " + KeywordText(*min);
      break;
    case Rule::kMaximum:
      if (const Json* max = Keyword(s, "maximum")) return "must be <= " + KeywordText(*max);
      break;
    case Rule::kMaxLength:
      if (const Json* max = Keyword(s, "maxLength")) {
        return "must be at most " + KeywordText(*max) + " characters";
      }
      break;
    case Rule::kMinLength:
      if (const Json* min = Keyword(s, "minLength")) {
        if (*min == 1) return "must not be empty";
        return "must be at least " + KeywordText(*min) + " characters";
      }
      break;
    case Rule::kPattern:
      if (const Json* pattern = Keyword(s, "pattern")) return "must match " + KeywordText(*pattern);
      break;
    case Rule::kMaxItems:
      if (const Json* max = Keyword(s, "maxItems")) {
        return "must have at most " + KeywordText(*max) + " items";
      }
      break;
    case Rule::kMinItems:
      if (const Json* min = Keyword(s, "minItems")) {
        return "must have at least " + KeywordText(*min) + " items";
      }
      break;
    case Rule::kOther:
    case Rule::kSummary:
      break;
  }
  // valijson's own words; they may quote a property name, never a value.
  std::string text(f.description);
  while (!text.empty() && text.back() == '.') text.pop_back();
  return text;
}

std::string Describe(const Json& schema, const Json& doc,
                     const valijson::ValidationResults& results) {
  std::optional<Finding> best;
  for (const auto& error : results) {
    Finding f = Classify(error);
    if (!best || f.path.size() > best->path.size() ||
        (f.path.size() == best->path.size() && Priority(f.rule) < Priority(best->rule))) {
      best = std::move(f);
    }
  }
  if (!best) return "(root): does not match the schema";
  const Location loc = Locate(schema, doc, best->path);
  return SanitizeUtf8(FormatJsonPointer(best->path) + ": " + RuleText(*best, loc),
                      kMaxMessageBytes);
}

Result<std::string, std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Err{std::string("cannot open file")};
  std::ostringstream data;
  data << in.rdbuf();
  if (in.bad()) return Err{std::string("read error")};
  return data.str();
}

}  // namespace

SchemaRegistry::SchemaRegistry() = default;
SchemaRegistry::SchemaRegistry(SchemaRegistry&&) noexcept = default;
SchemaRegistry& SchemaRegistry::operator=(SchemaRegistry&&) noexcept = default;
SchemaRegistry::~SchemaRegistry() = default;

std::optional<std::string> SchemaRegistry::Load(EventType type, std::string_view content) {
  auto entry = std::make_unique<Entry>();
  try {
    entry->document = Json::parse(content);
  } catch (const Json::exception& e) {
    return "invalid JSON: " + std::string(e.what());
  }
  const Json& doc = entry->document;
  if (!doc.is_object()) return std::string("a schema must be a JSON object");
  if (doc.value("$schema", "") != kDraft07) {
    return R"("$schema" must be ")" + std::string(kDraft07) + R"(")";
  }
  if (doc.value("type", "") != "object") return std::string(R"("type" must be "object")");
  try {
    valijson::SchemaParser parser(valijson::SchemaParser::kDraft7);
    valijson::adapters::NlohmannJsonAdapter adapter(doc);
    parser.populateSchema(adapter, entry->schema);
    const Json::json_pointer rule("/properties/company_id/pattern");
    if (doc.contains(rule) && doc.at(rule) == kTenantIdPattern) {
      Json copy = doc;
      copy.at("properties").at("company_id").erase("pattern");
      entry->without_tenant_rule = std::make_unique<valijson::Schema>();
      valijson::adapters::NlohmannJsonAdapter copy_adapter(copy);
      parser.populateSchema(copy_adapter, *entry->without_tenant_rule);
    }
  } catch (const std::exception& e) {
    return "invalid schema: " + std::string(e.what());
  }
  entries_[static_cast<size_t>(type)] = std::move(entry);
  return std::nullopt;
}

Result<SchemaRegistry, std::string> SchemaRegistry::LoadEmbedded() {
  SchemaRegistry reg;
  const auto files = EmbeddedSchemas();
  for (EventType type : kAllEventTypes) {
    const std::string path = SchemaPath(type);
    const EmbeddedFile* found = nullptr;
    for (const EmbeddedFile& file : files) {
      if (file.path == path) found = &file;
    }
    if (found == nullptr) return Err{"embedded schema " + path + ": missing"};
    if (auto error = reg.Load(type, found->content)) {
      return Err{"embedded schema " + path + ": " + *error};
    }
  }
  return reg;
}

Result<SchemaRegistry, std::string> SchemaRegistry::LoadFromDirectory(
    const std::filesystem::path& dir) {
  SchemaRegistry reg;
  for (EventType type : kAllEventTypes) {
    const std::filesystem::path path = dir / SchemaPath(type);
    auto content = ReadFile(path);
    if (!content) return Err{"schema " + path.string() + ": " + content.error()};
    if (auto error = reg.Load(type, *content)) {
      return Err{"schema " + path.string() + ": " + *error};
    }
  }
  return reg;
}

std::optional<std::string> SchemaRegistry::Validate(EventType type, const nlohmann::json& doc,
                                                    std::string_view checked_tenant) const {
  const Entry& entry = *entries_[static_cast<size_t>(type)];
  // A company_id equal to a tenant id that already passed the tenant rule passes the schema's
  // copy of that rule as well: the schema without it gives the same verdict and the same
  // messages, without running std::regex (about a twentieth of the decode and validation
  // time of a small event).
  const valijson::Schema* schema = &entry.schema;
  if (entry.without_tenant_rule != nullptr && !checked_tenant.empty() && doc.is_object()) {
    const auto it = doc.find("company_id");
    if (it != doc.end() && it->is_string() && it->get_ref<const std::string&>() == checked_tenant) {
      schema = entry.without_tenant_rule.get();
    }
  }
  // One Validator per thread: it caches compiled regexes (std::regex is costly to build)
  // and is not thread-safe; the Schema itself is only read.
  thread_local valijson::Validator validator(valijson::Validator::kStrongTypes);
  try {
    const valijson::adapters::NlohmannJsonAdapter target(doc);
    // Fast path stops at the first failure; collect details only for invalid documents.
    if (validator.validate(*schema, target, nullptr)) return std::nullopt;
    valijson::ValidationResults results;
    validator.validate(*schema, target, &results);
    return Describe(entry.document, doc, results);
  } catch (const std::exception& e) {
    return SanitizeUtf8("(root): validator error: " + std::string(e.what()), kMaxMessageBytes);
  }
}

const nlohmann::json& SchemaRegistry::SchemaDocument(EventType type) const {
  return entries_[static_cast<size_t>(type)]->document;
}

std::string FormatJsonPointer(std::span<const std::string> segments) {
  if (segments.empty()) return "(root)";
  std::string out;
  for (const std::string& segment : segments) {
    out += '/';
    for (char c : SanitizeUtf8(segment, kMaxSegmentBytes)) {
      if (c == '~') {
        out += "~0";
      } else if (c == '/') {
        out += "~1";
      } else {
        out += c;
      }
    }
  }
  return out;
}

}  // namespace evp::validation
