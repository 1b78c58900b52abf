#include "chaos/workload.hpp"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <stdexcept>

namespace evp::chaos {
namespace {

using nlohmann::json;

constexpr Kind kBadKinds[] = {Kind::kMalformedJson, Kind::kSchemaInvalid, Kind::kTenantMismatch,
                              Kind::kInvalidTenant, Kind::kOversize,      Kind::kInvalidUtf8,
                              Kind::kUnknownType};

// Tenant tokens that must be refused (invalid_tenant), each still a legal NATS subject token.
const std::vector<std::string>& InvalidTenantTokens() {
  static const std::vector<std::string> kTokens = {"9bad", "bad-dash", "_leading_underscore",
                                                   std::string(41, 'x'), "caf\xC3\xA9"};
  return kTokens;
}

struct TenantState {
  std::vector<int64_t> chat_versions;                      // last conversation_timestamp per chat
  std::vector<std::pair<std::string, int64_t>> updatable;  // (message_id, message_timestamp)
  std::set<std::string> upserted_contacts;                 // each contact is upserted once
};

}  // namespace

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kMessageUpsert:
      return "messages.upsert";
    case Kind::kMessageUpdate:
      return "messages.update";
    case Kind::kChatUpsert:
      return "chats.upsert";
    case Kind::kContactUpsert:
      return "contacts.upsert";
    case Kind::kMalformedJson:
      return "malformed_json";
    case Kind::kSchemaInvalid:
      return "schema_invalid";
    case Kind::kTenantMismatch:
      return "tenant_mismatch";
    case Kind::kInvalidTenant:
      return "invalid_tenant";
    case Kind::kOversize:
      return "oversize";
    case Kind::kInvalidUtf8:
      return "invalid_utf8";
    case Kind::kUnknownType:
      return "unknown_type";
  }
  return "?";
}

bool IsBad(Kind k) {
  return k != Kind::kMessageUpsert && k != Kind::kMessageUpdate && k != Kind::kChatUpsert &&
         k != Kind::kContactUpsert;
}

const std::vector<std::string>& InjectionStrings() {
  static const std::vector<std::string> kStrings = {
      "'; DROP TABLE messages; --",
      "Robert'); DROP SCHEMA events_ops CASCADE;--",
      R"("},{"message_id":"evil","flow":"IN"})",
      "$1 $2 ::jsonb ::text[] %s %n {0}",
      "\\N",
      "\\.",
      "tab\there\nnew line\r\nback\\slash \\\\ \\x00",
      "E'\\047' || chr(39) || '",
      "{\"$ne\": null, \"$where\": \"sleep(1)\"}",
      // Split so that the letters after each \x escape are not read as more hex digits.
      "\xE2\x80\xAE right-to-left \xF0\x9F\x8E\x89 \xC3\xBC"  // NOLINT(bugprone-suspicious-missing-comma)
      "n\xC3\xAF"
      "c\xC3\xB8"
      "d\xC3\xA9",
      "); COPY events_ops.exhausted_events TO PROGRAM 'id'; --",
      "-- comment /* block */ ; SELECT pg_sleep(10);",
  };
  return kStrings;
}

std::string SchemaOf(const std::string& tenant) {
  std::string lower = tenant;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return "tenant_" + lower;
}

Workload Workload::Generate(const WorkloadSpec& spec) {
  if (spec.tenants.empty()) throw std::invalid_argument("WorkloadSpec without tenants");
  Workload w;
  w.tenants = spec.tenants;
  std::mt19937_64 rng(spec.seed);
  std::vector<double> weights = spec.tenant_weights;
  if (weights.empty()) weights.assign(spec.tenants.size(), 1.0);
  std::discrete_distribution<int> pick_tenant(weights.begin(), weights.end());
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<TenantState> state(spec.tenants.size());
  for (auto& s : state) s.chat_versions.assign(static_cast<size_t>(spec.chats_per_tenant), 0);
  const auto& injections = InjectionStrings();
  size_t next_bad = 0;
  size_t next_injection = 0;
  w.events.reserve(static_cast<size_t>(spec.events));

  for (int64_t n = 0; n < spec.events; ++n) {
    const int t = pick_tenant(rng);
    const std::string& tenant = spec.tenants[static_cast<size_t>(t)];
    TenantState& ts = state[static_cast<size_t>(t)];
    const bool may_fail = spec.upsert_only_tenants.count(t) > 0;
    const bool upsert_only = may_fail || spec.messages_only;
    const std::string nid = std::to_string(n);
    Event e;
    e.msg_id = spec.id_prefix + "-" + nid;
    e.tenant = t;

    const double r = unit(rng);
    if (!upsert_only && !spec.update_pairs && r < spec.bad_share) {
      e.kind = kBadKinds[next_bad++ % std::size(kBadKinds)];
      e.expect = Expect::kExhaust;
      e.expect_company = tenant;
      e.order_key = e.msg_id;
      const std::string bad_id = spec.id_prefix + "-bad" + nid;
      json valid_message = {{"message_id", bad_id},
                            {"chat_id", "c0"},
                            {"jid", "c0@s"},
                            {"flow", "OUT"},
                            {"message_text", "bad " + nid}};
      switch (e.kind) {
        case Kind::kMalformedJson:
          e.subject = "v1.messages.upsert." + tenant;
          e.body = (next_bad % 2 == 0) ? R"({"message_id":")" + bad_id + R"(","chat_id":)"
                                       : std::string(" \n\t ");
          e.expect_reason = "malformed_json";
          break;
        case Kind::kSchemaInvalid:
          e.subject = "v1.messages.upsert." + tenant;
          if (next_bad % 3 == 0) {
            e.body = "[1,2,3]";
          } else {
            json j = valid_message;
            j["flow"] = "SIDEWAYS";
            e.body = j.dump();
          }
          e.expect_reason = "schema_violation";
          break;
        case Kind::kTenantMismatch: {
          e.subject = "v1.messages.upsert." + tenant;
          json j = valid_message;
          j["company_id"] = "ghost_" + nid;
          e.body = j.dump();
          e.expect_reason = "tenant_mismatch";
          break;
        }
        case Kind::kInvalidTenant: {
          const auto& tokens = InvalidTenantTokens();
          const std::string& token = tokens[next_bad % tokens.size()];
          e.subject = "v1.chats.upsert." + token;
          e.body = json{{"chat_id", "c0"}, {"jid", "c0@s"}, {"phone_number", "+1"}}.dump();
          e.expect_reason = "invalid_tenant";
          e.expect_company = token;
          e.tenant = -1;
          break;
        }
        case Kind::kOversize: {
          e.subject = "v1.messages.upsert." + tenant;
          json j = valid_message;
          j["message_text"] = std::string(static_cast<size_t>(spec.max_event_bytes) + 512, 'o');
          e.body = j.dump();
          e.expect_reason = "too_large";
          break;
        }
        case Kind::kInvalidUtf8:
          e.subject = "v1.messages.upsert." + tenant;
          e.body = R"({"message_id":")" + bad_id +
                   "\",\"chat_id\":\"c0\",\"jid\":\"j\",\"flow\":\"OUT\",\"message_text\":\"bad "
                   "\xC3\x28 \xFF\xFE\"}";
          e.expect_reason = "malformed_json";
          break;
        case Kind::kUnknownType:
          e.subject = "v1.chats.delete." + tenant;
          e.body = json{{"chat_id", "c0"}}.dump();
          e.expect_reason = "unknown_type";
          break;
        default:
          break;
      }
      w.events.push_back(std::move(e));
      continue;
    }

    // A valid event. Weights: 60 messages.upsert, 15 messages.update, 15 chats, 10 contacts.
    const double v = unit(rng) * 100;
    Kind kind = Kind::kMessageUpsert;
    if (spec.update_pairs) {
      kind = ts.updatable.empty() ? Kind::kMessageUpsert : Kind::kMessageUpdate;
    } else if (!upsert_only) {
      if (v >= 60 && v < 75 && !ts.updatable.empty()) {
        kind = Kind::kMessageUpdate;
      } else if (v >= 75 && v < 90) {
        kind = Kind::kChatUpsert;
      } else if (v >= 90) {
        kind = Kind::kContactUpsert;
      }
    }
    e.kind = kind;
    e.expect = may_fail ? Expect::kApplyOrExhaust : Expect::kApply;
    switch (kind) {
      case Kind::kMessageUpsert: {
        const std::string id = spec.id_prefix + "-m" + nid;
        const int chat = static_cast<int>(rng() % static_cast<uint64_t>(spec.chats_per_tenant));
        const int64_t mts = spec.base_time + n / 64;
        std::string text = "message " + nid + " of " + tenant;
        json obj = {{"n", n}};
        if (rng() % 100 == 0) {
          text = injections[next_injection++ % injections.size()];
          obj = {{"'; DROP TABLE chats; --", text}, {"nested", {{"\\N", "\\."}}}};
          e.injection = true;
        }
        e.subject = "v1.messages.upsert." + tenant;
        e.key = id;
        e.text = text;
        e.chat_id = "c" + std::to_string(chat);
        json j = {{"message_id", id},
                  {"chat_id", e.chat_id},
                  {"jid", e.chat_id + "@s.whatsapp.net"},
                  {"flow", "OUT"},
                  {"message_type", "text"},
                  {"message_text", text},
                  {"status", "sent"},
                  {"message_timestamp", mts},
                  {"key", {{"id", id}, {"from_me", true}, {"remote_jid", e.chat_id}}},
                  {"message_obj", obj}};
        if (!upsert_only && !spec.update_pairs && rng() % 20 == 0) {
          // The first inbound message of an (agent, phone) in the stream onboards it, unless
          // a contacts.upsert of it comes earlier.
          const std::string agent = spec.id_prefix + "-ag" + std::to_string(rng() % 3);
          const std::string phone = "+4470" + std::to_string(rng() % 40);
          j["flow"] = "IN";
          j["agent_id"] = agent;
          j["from_phone"] = phone;
          e.onboards = std::make_pair(agent, phone);
        }
        if (rng() % 3 == 0) j["company_id"] = tenant;  // matching payload tenant is fine
        e.body = j.dump();
        e.order_key = tenant + "|" + id;
        if (!upsert_only) ts.updatable.emplace_back(id, mts);
        break;
      }
      case Kind::kMessageUpdate: {
        // Half of the updates follow their message closely (the same or the next batch, maybe
        // on another replica), the rest come much later.
        const size_t pick = spec.update_pairs || rng() % 2 == 0
                                ? ts.updatable.size() - 1
                                : static_cast<size_t>(rng() % ts.updatable.size());
        auto [id, mts] = ts.updatable[pick];
        ts.updatable[pick] = ts.updatable.back();
        ts.updatable.pop_back();
        e.subject = "v1.messages.update." + tenant;
        e.key = id;
        e.text = (n % 2 == 0) ? "read" : "delivered";
        e.body = json{{"message_id", id}, {"status", e.text}, {"timestamp", mts + 1}}.dump();
        e.order_key = tenant + "|" + id;
        break;
      }
      case Kind::kChatUpsert: {
        const int chat = static_cast<int>(rng() % static_cast<uint64_t>(spec.chats_per_tenant));
        int64_t& last = ts.chat_versions[static_cast<size_t>(chat)];
        last = last == 0 ? spec.base_time : last + 1;
        e.subject = "v1.chats.upsert." + tenant;
        e.key = "c" + std::to_string(chat);
        e.version = last;
        e.text = "push " + nid;
        json j = {{"chat_id", e.key},
                  {"jid", e.key + "@s.whatsapp.net"},
                  {"phone_number", "+55" + std::to_string(chat)},
                  {"push_name", e.text},
                  {"unread_count", n % 9},
                  {"is_group", false},
                  {"conversation_timestamp", last},
                  {"last_message", {{"text", "last " + nid}, {"n", n}}}};
        if (rng() % 100 == 0) {
          e.text = injections[next_injection++ % injections.size()];
          j["push_name"] = e.text;
          e.injection = true;
        }
        e.body = j.dump();
        e.order_key = tenant + "|chat|" + e.key;
        break;
      }
      case Kind::kContactUpsert: {
        std::string agent = "ca" + std::to_string(n % 3);
        std::string phone = "+1555" + nid;
        if (rng() % 4 == 0) {
          // A contact that inbound messages may onboard: which of the two comes first in
          // the stream decides whether it gets an onboarding_log row.
          // The workload's own agents: workloads sharing a ledger never share a contact.
          const std::string a = spec.id_prefix + "-ag" + std::to_string(rng() % 3);
          const std::string p = "+4470" + std::to_string(rng() % 40);
          if (ts.upserted_contacts.insert(a + "|" + p).second) {
            agent = a;
            phone = p;
          }
        }
        e.subject = "v1.contacts.upsert." + tenant;
        e.key = agent + "|" + phone;
        e.text = "contact " + nid;
        json j = {{"agent_id", agent},   {"phone_number", phone},
                  {"push_name", e.text}, {"type", "PERSONAL"},
                  {"status", "ACTIVE"},  {"tags", {"chaos", "t" + std::to_string(n % 4)}}};
        if (rng() % 100 == 0) {
          j["notes"] = injections[next_injection++ % injections.size()];
          e.injection = true;
        }
        e.body = j.dump();
        e.order_key = tenant + "|contact|" + e.key;
        break;
      }
      default:
        break;
    }
    w.events.push_back(std::move(e));
  }
  return w;
}

Workload Workload::Republished(const std::string& msg_id_suffix) const {
  Workload copy = *this;
  for (auto& e : copy.events) e.msg_id += msg_id_suffix;
  return copy;
}

size_t Ledger::Add(const Workload& w) {
  if (events.empty() && tenants.empty()) tenants = w.tenants;
  if (tenants != w.tenants) throw std::invalid_argument("Ledger::Add: different tenant lists");
  const size_t first = events.size();
  events.insert(events.end(), w.events.begin(), w.events.end());
  records.resize(events.size());
  return first;
}

}  // namespace evp::chaos
