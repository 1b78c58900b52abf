#include "routing/subject.hpp"

#include <vector>

#include "core/text.hpp"

namespace evp::routing {
namespace {

std::vector<std::string_view> Split(std::string_view s) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    if (dot == std::string_view::npos) {
      out.push_back(s.substr(start));
      return out;
    }
    out.push_back(s.substr(start, dot - start));
    start = dot + 1;
  }
}

std::string Printable(std::string_view s) { return Shown(s, 80); }

// Action and domain tokens of v1 subjects.
bool IsSubjectWord(std::string_view token) {
  for (std::string_view w :
       {"upsert", "update", "chats", "messages", "contacts", "connection", "history", "dlq"}) {
    if (token == w) return true;
  }
  return false;
}

}  // namespace

std::optional<std::string> TenantIdError(std::string_view id) {
  if (id.empty()) return "company_id is empty";
  if (id.size() > 40) return "company_id is longer than 40 characters";
  auto alpha = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); };
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  if (!alpha(id[0])) return "company_id '" + Printable(id) + "' must start with a letter";
  for (char c : id) {
    if (!alpha(c) && !digit(c) && c != '_') {
      return "company_id '" + Printable(id) + "' may only contain letters, digits and '_'";
    }
  }
  return std::nullopt;
}

Result<Route, RouteError> ParseSubject(std::string_view subject) {
  std::vector<std::string_view> t = Split(subject);
  // The tenant an unroutable event is filed under: the last token (SPEC §4), unless the
  // subject is too short to hold one: of a 3-token subject, the last one only when it is no
  // action or domain word (v1.chats.acme names acme, v1.chats.upsert names nobody). Else
  // none (an empty company_id, on v1.dlq._invalid).
  std::string raw_tenant;
  if (t.size() >= 4) {
    raw_tenant = std::string(t.back());
  } else if (t.size() == 3 && !IsSubjectWord(t[2])) {
    raw_tenant = std::string(t[2]);
  }
  auto unknown = [&](std::string msg) -> Result<Route, RouteError> {
    return Err{RouteError{{ReasonCode::kUnknownType, std::move(msg)}, raw_tenant}};
  };
  if (t.size() < 2 || t[0] != "v1") {
    return unknown("subject '" + Printable(subject) + "' is not a v1 subject");
  }
  std::string name;
  if (t[1] == "history") {
    if (t.size() != 4) {
      return unknown("subject '" + Printable(subject) +
                     "' must be v1.history.<chats|messages|contacts>.<company_id>");
    }
    name = "history." + std::string(t[2]);
  } else {
    if (t.size() != 4) {
      return unknown("subject '" + Printable(subject) +
                     "' must be v1.<domain>.<action>.<company_id>");
    }
    name = std::string(t[1]) + "." + std::string(t[2]);
  }
  std::optional<EventType> type = EventTypeFromName(name);
  if (!type) return unknown("no route for event type '" + Printable(name) + "'");
  if (auto err = TenantIdError(t[3])) {
    return Err{RouteError{{ReasonCode::kInvalidTenant, *err}, raw_tenant}};
  }
  return Route{*type, std::string(t[3])};
}

std::optional<std::string> SubjectTenant(std::string_view subject) {
  std::vector<std::string_view> t = Split(subject);
  if (t.size() != 4 || t[0] != "v1" || TenantIdError(t[3])) return std::nullopt;
  return std::string(t[3]);
}

std::string SubjectFor(EventType type, std::string_view company_id) {
  return "v1." + std::string(EventTypeName(type)) + "." + std::string(company_id);
}

std::string DlqSubjectFor(std::string_view company_id, bool invalid_tenant) {
  if (invalid_tenant || TenantIdError(company_id)) {
    return "v1.dlq." + std::string(kInvalidTenantToken);
  }
  return "v1.dlq." + std::string(company_id);
}

}  // namespace evp::routing
