#pragma once
// Subject -> route. Pure functions; thread-safe.
//   v1.<domain>.<action>.<company_id>   realtime (chats|messages|contacts upsert/update,
//                                       connection.update)
//   v1.history.<domain>.<company_id>    historical import
//   v1.dlq.<company_id>                 dead-letter queue
#include <optional>
#include <string>
#include <string_view>

#include "core/event.hpp"
#include "core/result.hpp"

namespace evp::routing {

inline constexpr std::string_view kInvalidTenantToken = "_invalid";

struct Route {
  EventType type;
  std::string company_id;
};

// Why a subject could not be routed; the tenant (raw last token) is kept when there is one.
struct RouteError {
  Failure failure;
  std::string raw_tenant;  // last subject token, may be invalid or empty
};

// Valid: ^[A-Za-z][A-Za-z0-9_]{0,39}$. Returns the reason when invalid.
std::optional<std::string> TenantIdError(std::string_view company_id);

// A subject captured by one of our streams that matches no route (v1.chats.delete.x, missing
// or extra tokens) is kUnknownType; a bad last token on a known route is kInvalidTenant.
Result<Route, RouteError> ParseSubject(std::string_view subject);

std::string SubjectFor(EventType type, std::string_view company_id);

// The tenant an event subject belongs to, routable or not: the last token of a
// v1.<a>.<b>.<company_id> subject with a valid id. nullopt for other shapes (missing or
// extra tokens: the last token is no tenant) and invalid ids.
std::optional<std::string> SubjectTenant(std::string_view subject);
// v1.dlq.<company_id>, or v1.dlq._invalid when the id itself is invalid (or, with
// invalid_tenant = true, refused for another reason such as a case collision).
std::string DlqSubjectFor(std::string_view company_id, bool invalid_tenant = false);

}  // namespace evp::routing
