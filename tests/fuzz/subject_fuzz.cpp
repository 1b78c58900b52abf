// libFuzzer target: subject routing on arbitrary bytes (routing::ParseSubject, TenantIdError,
// SubjectFor, DlqSubjectFor). Subjects come from publishers, so every byte string must route
// or fail cleanly, and what we derive from it (DLQ subject, log text) must stay safe.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <regex>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "routing/subject.hpp"

namespace {

using evp::fuzz::Check;
using evp::fuzz::IsPrintableText;

size_t CountTokens(std::string_view s) {
  size_t n = 1;
  for (char c : s) n += c == '.' ? 1 : 0;
  return n;
}

std::string_view LastToken(std::string_view s) {
  const size_t dot = s.rfind('.');
  return dot == std::string_view::npos ? s : s.substr(dot + 1);
}

// The tenant rule written independently of routing/subject.cpp.
bool IsValidTenant(std::string_view id) {
  auto alpha = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); };
  if (id.empty() || id.size() > 40 || !alpha(id[0])) return false;
  for (char c : id) {
    if (!alpha(c) && !(c >= '0' && c <= '9') && c != '_') return false;
  }
  return true;
}

void CheckTenant(std::string_view id) {
  const auto error = evp::routing::TenantIdError(id);
  Check(!error == IsValidTenant(id), "TenantIdError disagrees with the tenant rule", id);
  // Messages are logged and stored: printable and bounded, whatever the input.
  if (error) {
    Check(IsPrintableText(*error), "TenantIdError message not printable", *error);
    Check(error->size() <= 256, "TenantIdError message too long", *error);
  }
  // The payload's company_id is checked by this JSON Schema pattern (schemas/v1/*.json);
  // it must agree with the subject rule. std::regex is slow: short ids only.
  if (id.size() <= 64) {
    static const std::regex kSchemaPattern("^[A-Za-z][A-Za-z0-9_]{0,39}$");
    const bool schema_ok = std::regex_search(std::string(id), kSchemaPattern);
    Check(schema_ok == !error, "schema pattern and TenantIdError disagree", id);
  }

  const std::string dlq = evp::routing::DlqSubjectFor(id);
  Check(CountTokens(dlq) == 3, "DLQ subject does not have 3 tokens", dlq);
  Check(dlq.rfind("v1.dlq.", 0) == 0, "DLQ subject does not start with v1.dlq.", dlq);
  for (char c : dlq) {
    Check(c != '*' && c != '>' && c != ' ' && !evp::fuzz::IsControl(c),
          "DLQ subject has a wildcard, space or control byte", dlq);
  }
  Check(dlq.find("..") == std::string::npos && dlq.back() != '.', "DLQ subject has empty token",
        dlq);
  const std::string expected = error ? "v1.dlq." + std::string(evp::routing::kInvalidTenantToken)
                                     : "v1.dlq." + std::string(id);
  Check(dlq == expected, "DLQ subject is not v1.dlq.<tenant or _invalid>", dlq);
}

void Run(std::string_view subject) {
  auto route = evp::routing::ParseSubject(subject);
  if (route.ok()) {
    Check(!evp::routing::TenantIdError(route->company_id), "routed tenant fails TenantIdError",
          route->company_id);
    Check(route->company_id == LastToken(subject), "routed tenant is not the last token", subject);
    Check(evp::routing::SubjectFor(route->type, route->company_id) == subject,
          "SubjectFor does not rebuild the parsed subject", subject);
  } else {
    const auto& failure = route.error().failure;
    Check(failure.code == evp::ReasonCode::kUnknownType ||
              failure.code == evp::ReasonCode::kInvalidTenant,
          "unexpected reason code", failure.Reason());
    Check(IsPrintableText(failure.message), "route error message not printable", failure.message);
    Check(failure.message.size() <= 512, "route error message too long", failure.message);
    const std::string_view raw = route.error().raw_tenant;
    // The last token, or nothing for subjects too short to name a tenant.
    if (CountTokens(subject) >= 4) {
      Check(raw == LastToken(subject), "raw_tenant is not the last token", subject);
    } else {
      Check(raw.empty() || raw == LastToken(subject), "raw_tenant is not the last token", subject);
    }
    if (failure.code == evp::ReasonCode::kInvalidTenant) {
      Check(evp::routing::TenantIdError(raw).has_value(), "kInvalidTenant for a valid tenant", raw);
    }
  }

  CheckTenant(subject);
  CheckTenant(LastToken(subject));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    Run(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const std::exception& e) {
    evp::fuzz::Fail("exception escaped", e.what());
  }
  return 0;
}
