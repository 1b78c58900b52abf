#include "validation/json_spans.hpp"

#include <nlohmann/json.hpp>

namespace evp::validation {
namespace {

// A cursor over text that is known to be valid JSON.
class Scanner {
 public:
  explicit Scanner(std::string_view text) : text_(text) {}

  size_t pos() const { return pos_; }
  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek() const { return AtEnd() ? '\0' : text_[pos_]; }

  void SkipSpace() {
    while (!AtEnd() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' ||
                        text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool Consume(char c) {
    SkipSpace();
    if (Peek() != c) return false;
    ++pos_;
    return true;
  }

  // A string starting at the cursor (the opening quote); returns its raw text with quotes.
  std::optional<std::string_view> String() {
    if (Peek() != '"') return std::nullopt;
    const size_t start = pos_++;
    while (!AtEnd()) {
      const char c = text_[pos_++];
      if (c == '\\') {
        ++pos_;
      } else if (c == '"') {
        return text_.substr(start, pos_ - start);
      }
    }
    return std::nullopt;
  }

  // Skips one value starting at the cursor; returns its raw text.
  std::optional<std::string_view> Value() {
    SkipSpace();
    const size_t start = pos_;
    if (Peek() == '"') return String();
    if (Peek() != '{' && Peek() != '[') {
      while (!AtEnd() && text_[pos_] != ',' && text_[pos_] != '}' && text_[pos_] != ']' &&
             text_[pos_] != ' ' && text_[pos_] != '\t' && text_[pos_] != '\n' &&
             text_[pos_] != '\r') {
        ++pos_;
      }
      if (pos_ == start) return std::nullopt;
      return text_.substr(start, pos_ - start);
    }
    size_t depth = 0;
    while (!AtEnd()) {
      const char c = text_[pos_];
      if (c == '"') {
        if (!String()) return std::nullopt;
        continue;
      }
      ++pos_;
      if (c == '{' || c == '[') {
        ++depth;
      } else if (c == '}' || c == ']') {
        if (--depth == 0) return text_.substr(start, pos_ - start);
      }
    }
    return std::nullopt;
  }

 private:
  std::string_view text_;
  size_t pos_ = 0;
};

// The key's value as the parser sees it (escapes such as \u0063 resolved).
bool KeyEquals(std::string_view raw, std::string_view key) {
  if (raw.find('\\') == std::string_view::npos) {
    return raw.size() == key.size() + 2 && raw.substr(1, key.size()) == key;
  }
  auto decoded = nlohmann::json::parse(raw, nullptr, false);
  return decoded.is_string() && decoded.get_ref<const std::string&>() == key;
}

std::optional<std::vector<std::string_view>> Elements(Scanner& s) {
  std::vector<std::string_view> out;
  if (!s.Consume('[')) return std::nullopt;
  if (s.Consume(']')) return out;
  while (true) {
    auto v = s.Value();
    if (!v) return std::nullopt;
    out.push_back(*v);
    if (s.Consume(']')) return out;
    if (!s.Consume(',')) return std::nullopt;
  }
}

// Calls visit(raw key, scanner at the member's value) for each top-level member of `doc`;
// visit consumes the value and returns false on text it cannot read. False when `doc` is
// not a non-empty object, or a member could not be read.
template <typename Visit>
bool ForEachMember(std::string_view doc, Visit visit) {
  Scanner s(doc);
  if (!s.Consume('{') || s.Consume('}')) return false;
  while (true) {
    s.SkipSpace();
    auto name = s.String();
    if (!name || !s.Consume(':')) return false;
    s.SkipSpace();
    if (!visit(*name, s)) return false;
    if (s.Consume('}')) return true;
    if (!s.Consume(',')) return false;
  }
}

}  // namespace

std::optional<std::vector<std::string_view>> ArrayElementSpans(std::string_view doc,
                                                               std::string_view key) {
  std::optional<std::vector<std::string_view>> found;
  const bool read = ForEachMember(doc, [&](std::string_view name, Scanner& s) {
    if (!KeyEquals(name, key)) return s.Value().has_value();
    // The last occurrence wins, as in the parsed document; a non-array value clears it.
    if (s.Peek() == '[') {
      found = Elements(s);
      return found.has_value();
    }
    found.reset();
    return s.Value().has_value();
  });
  if (!read) return std::nullopt;
  return found;
}

std::optional<SalvagedEnvelope> SalvageArrayElementSpans(std::string_view doc,
                                                         std::string_view key) {
  SalvagedEnvelope out;
  bool has_array = false;
  Scanner s(doc);
  if (!s.Consume('{')) return std::nullopt;
  while (true) {
    s.SkipSpace();
    auto name = s.String();
    if (!name || !s.Consume(':')) return std::nullopt;
    s.SkipSpace();
    if (KeyEquals(*name, key) && !has_array) {
      auto elements = Elements(s);
      if (!elements) return std::nullopt;
      out.elements = std::move(*elements);
      has_array = true;
    } else if (KeyEquals(*name, "company_id") && !out.company_id) {
      out.company_id = s.Value();
      if (!out.company_id) return std::nullopt;
    } else {
      return std::nullopt;
    }
    if (s.Consume('}')) break;
    if (!s.Consume(',')) return std::nullopt;
  }
  s.SkipSpace();
  if (!has_array || !s.AtEnd()) return std::nullopt;
  return out;
}

std::optional<std::string_view> MemberSpan(std::string_view doc, std::string_view key) {
  std::optional<std::string_view> found;
  const bool read = ForEachMember(doc, [&](std::string_view name, Scanner& s) {
    auto value = s.Value();
    if (value && KeyEquals(name, key)) found = value;  // the last occurrence wins
    return value.has_value();
  });
  if (!read) return std::nullopt;
  return found;
}

}  // namespace evp::validation
