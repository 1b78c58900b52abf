#include "validation/decoder.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "validation/utf8.hpp"

namespace evp::validation {
namespace {

using Json = nlohmann::json;

Failure Malformed(std::string message) {
  return Failure{ReasonCode::kMalformedJson, std::move(message)};
}

bool IsJsonWhitespace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Offset of the bracket that opens level max_depth + 1, or std::nullopt. A linear scan that
// only tracks strings, so it cannot blow the stack; syntax is left to the parser.
std::optional<size_t> FindExcessiveNesting(std::string_view bytes, size_t max_depth) {
  // Every level opens with its own '[' or '{'. With no more of them than max_depth in the
  // whole text (strings included), nothing can nest deeper: no walk needed. (memchr skips
  // the text between them many bytes at a time.)
  size_t opening = 0;
  for (const char bracket : {'{', '['}) {
    for (const char* p = bytes.data(); opening <= max_depth;) {
      const size_t left = bytes.size() - static_cast<size_t>(p - bytes.data());
      p = static_cast<const char*>(std::memchr(p, bracket, left));
      if (p == nullptr) break;
      ++opening;
      ++p;
    }
  }
  if (opening <= max_depth) return std::nullopt;
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character cannot end the string
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '[':
      case '{':
        if (++depth > max_depth) return i;
        break;
      case ']':
      case '}':
        if (depth > 0) --depth;
        break;
      default:
        break;
    }
  }
  return std::nullopt;
}

// nlohmann's message minus its "[json.exception...] parse error at line L, column C: "
// prefix and minus the "; last read: '<excerpt>'" part, which quotes the payload. What
// remains comes from a fixed vocabulary ("syntax error while parsing value - invalid literal").
std::string SyntaxErrorText(const Json::parse_error& e) {
  std::string_view what = e.what();
  const size_t start = what.find("syntax error");
  if (start == std::string_view::npos) return "syntax error";
  what.remove_prefix(start);
  what = what.substr(0, what.find("; last read:"));
  return SanitizeUtf8(what, 160);
}

bool IsAfter(const Json& value, int64_t limit) {
  if (value.is_number_unsigned()) {
    return limit < 0 || value.get<uint64_t>() > static_cast<uint64_t>(limit);
  }
  if (value.is_number_integer()) return value.get<int64_t>() > limit;
  return false;  // the schema already requires integers
}

bool HasNul(std::string_view s) { return s.find('\0') != std::string_view::npos; }

// Path to the first string or key (depth-first, document order) that contains U+0000.
// Iterative, so documents built in code (no depth limit) cannot overflow the stack. At the
// root, the member named `skip_root_key` is not visited (history items are checked alone).
std::optional<std::vector<std::string>> FindNul(const Json& doc, std::string_view skip_root_key) {
  struct Frame {
    const Json* node;
    size_t depth;  // segments from the root
    std::string segment;
  };
  std::vector<Frame> stack;
  stack.push_back(Frame{&doc, 0, {}});
  std::vector<std::string> path;
  while (!stack.empty()) {
    Frame frame = std::move(stack.back());
    stack.pop_back();
    path.resize(frame.depth > 0 ? frame.depth - 1 : 0);
    if (frame.depth > 0) path.push_back(std::move(frame.segment));
    const Json& node = *frame.node;
    if (node.is_string()) {
      if (HasNul(node.get_ref<const std::string&>())) return path;
    } else if (node.is_object()) {
      std::vector<Frame> children;
      for (auto it = node.begin(); it != node.end(); ++it) {
        if (frame.depth == 0 && !skip_root_key.empty() && it.key() == skip_root_key) continue;
        if (HasNul(it.key())) {
          path.push_back(it.key());
          return path;
        }
        children.push_back(Frame{&it.value(), frame.depth + 1, it.key()});
      }
      stack.insert(stack.end(), std::make_move_iterator(children.rbegin()),
                   std::make_move_iterator(children.rend()));
    } else if (node.is_array()) {
      for (size_t i = node.size(); i-- > 0;) {
        stack.push_back(Frame{&node[i], frame.depth + 1, std::to_string(i)});
      }
    }
  }
  return std::nullopt;
}

}  // namespace

Result<nlohmann::json, Failure> DecodeEvent(std::string_view bytes, size_t max_bytes) {
  if (bytes.size() > max_bytes) {
    return Err{Failure{ReasonCode::kTooLarge, "event is " + std::to_string(bytes.size()) +
                                                  " bytes, limit is " + std::to_string(max_bytes)}};
  }
  if (bytes.empty()) return Err{Malformed("event body is empty")};
  if (std::all_of(bytes.begin(), bytes.end(), IsJsonWhitespace)) {
    return Err{Malformed("event body is only whitespace")};
  }
  if (auto pos = FindInvalidUtf8(bytes)) {
    return Err{Malformed("invalid UTF-8 at byte offset " + std::to_string(*pos))};
  }
  // A raw NUL byte is never valid JSON (inside a string it must be escaped), and the parser
  // reads it as the end of its input: "{...}\0{...}" would parse as its first half.
  if (const size_t pos = bytes.find('\0'); pos != std::string_view::npos) {
    return Err{Malformed("NUL byte at byte offset " + std::to_string(pos))};
  }
  if (auto pos = FindExcessiveNesting(bytes, kMaxJsonDepth)) {
    return Err{Malformed("JSON nested deeper than " + std::to_string(kMaxJsonDepth) +
                         " levels at byte offset " + std::to_string(*pos))};
  }
  try {
    return Json::parse(bytes.begin(), bytes.end());
  } catch (const Json::parse_error& e) {
    // e.byte counts the characters read, the offending one included.
    const size_t offset = e.byte > 0 ? e.byte - 1 : 0;
    return Err{Malformed("invalid JSON at byte offset " + std::to_string(offset) + ": " +
                         SyntaxErrorText(e))};
  } catch (const Json::out_of_range&) {
    return Err{Malformed("invalid JSON: number out of range")};
  } catch (const Json::exception& e) {
    return Err{Malformed("invalid JSON (parser error " + std::to_string(e.id) + ")")};
  }
}

std::optional<Failure> ValidateEvent(const SchemaRegistry& reg, EventType type,
                                     const nlohmann::json& doc, int64_t now_unix, bool may_hold_nul,
                                     std::string_view checked_tenant) {
  if (auto message = reg.Validate(type, doc, checked_tenant)) {
    return Failure{ReasonCode::kSchemaViolation, std::move(*message)};
  }
  if (!IsHistory(type)) {
    const int64_t limit = now_unix > std::numeric_limits<int64_t>::max() - kMaxFutureSeconds
                              ? std::numeric_limits<int64_t>::max()
                              : now_unix + kMaxFutureSeconds;
    constexpr std::array<const char*, 3> kTimestampFields = {"conversation_timestamp",
                                                             "message_timestamp", "timestamp"};
    for (const char* field : kTimestampFields) {
      auto it = doc.find(field);
      if (it != doc.end() && IsAfter(*it, limit)) {
        return Failure{ReasonCode::kSchemaViolation,
                       "/" + std::string(field) + ": more than 24h in the future"};
      }
    }
  }
  if (!may_hold_nul) return std::nullopt;
  const std::string_view skip = IsHistory(type) ? HistoryArrayKey(type) : std::string_view();
  if (auto path = FindNul(doc, skip)) {
    return Failure{ReasonCode::kSchemaViolation,
                   FormatJsonPointer(*path) + ": contains U+0000, which cannot be stored"};
  }
  return std::nullopt;
}

}  // namespace evp::validation
