#pragma once
// The chaos suite's events and their expected outcomes. A seeded generator builds a workload
// whose final database state is computable from what was published: every message_id is
// upserted once with a known body (and updated at most once, later), chats are upserted
// repeatedly with strictly increasing conversation_timestamp (the newest must win), every
// contact key is upserted once, and ~1 % of the events are deliberately bad, of every kind.
// The Ledger records what was actually published (PubAck, stream sequence, publish time).
//
// Thread-safety: a Workload is immutable once generated; Ledger is filled by one thread per
// event (the publisher thread that owns it) and read after publishing ended.
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace evp::chaos {

enum class Kind {
  // Valid events.
  kMessageUpsert,  // unique message_id, known text (sometimes an injection string)
  kMessageUpdate,  // status of an earlier message, explicit newer timestamp
  kChatUpsert,     // a chat of the tenant's pool, increasing conversation_timestamp
  kContactUpsert,  // unique (agent_id, phone_number)
  // Bad events, each must end as exactly one exhausted row with the given reason code.
  kMalformedJson,   // truncated JSON
  kSchemaInvalid,   // valid JSON, wrong shape / enum
  kTenantMismatch,  // payload company_id differs from the subject's
  kInvalidTenant,   // subject tenant token violates ^[A-Za-z][A-Za-z0-9_]{0,39}$
  kOversize,        // more than MAX_EVENT_BYTES
  kInvalidUtf8,     // bytes that are not UTF-8
  kUnknownType,     // captured by a stream, matches no route (v1.chats.delete.<id>)
};
const char* KindName(Kind k);
bool IsBad(Kind k);

// What the test accepts as the end of an event.
enum class Expect {
  kApply,           // its effect is in the tenant tables (or superseded by a newer version)
  kExhaust,         // exactly one exhausted row with reason expect_reason
  kApplyOrExhaust,  // one of the two, never both (events of a tenant broken on purpose)
};

struct Event {
  Kind kind = Kind::kMessageUpsert;
  Expect expect = Expect::kApply;
  std::string subject;
  std::string body;
  std::string msg_id;   // Nats-Msg-Id, unique per published event
  int tenant = -1;      // index into Workload::tenants; -1 when the subject has no valid tenant
  std::string key;      // message_id, chat_id, or agent_id|phone_number
  std::string text;     // messages.upsert: message_text; chats/contacts: push_name;
                        // messages.update: status
  std::string chat_id;  // messages.upsert
  int64_t version = 0;  // chats: conversation_timestamp
  std::optional<std::pair<std::string, std::string>> onboards;  // (agent, phone) of a flow=IN
  std::string expect_reason;                                    // reason code of bad events
  std::string expect_company;  // exhausted_events.company_id of bad events
  bool injection = false;      // body carries SQL/JSON/COPY injection strings
  std::string order_key;       // events with one order key are published in order
};

struct WorkloadSpec {
  int64_t events = 10'000;
  std::vector<std::string> tenants;
  // Relative weight of each tenant (empty = uniform).
  std::vector<double> tenant_weights;
  // Tenants that only receive messages.upsert (e.g. their messages table is broken on
  // purpose) and whose events are expected applied *or* exhausted.
  std::set<int> upsert_only_tenants;
  bool messages_only = false;  // only valid messages.upsert (flow OUT), e.g. seed rows
  // Only valid (messages.upsert, messages.update) pairs, the update right after its message:
  // the two land in neighbouring batches, which several writers handle at the same time.
  bool update_pairs = false;
  double bad_share = 0.01;
  int64_t max_event_bytes = 65'536;  // the stack's MAX_EVENT_BYTES
  uint64_t seed = 1;
  std::string id_prefix = "e";  // prefix of message ids and Nats-Msg-Ids (unique per phase)
  int chats_per_tenant = 40;
  int64_t base_time = 0;  // unix seconds; chat/message timestamps start here
};

struct Workload {
  std::vector<std::string> tenants;
  std::vector<Event> events;
  static Workload Generate(const WorkloadSpec& spec);
  // The same bodies and subjects under fresh Nats-Msg-Ids (a publisher retrying after the
  // dedup window).
  Workload Republished(const std::string& msg_id_suffix) const;
};

struct PubRecord {
  bool acked = false;
  bool duplicate = false;  // PubAck said the stream had this Nats-Msg-Id already
  uint64_t seq = 0;
  int64_t sent_unix_us = 0;  // wall clock just before the publish that got the PubAck
  int attempts = 0;          // publish calls made (retries after errors)
  std::string last_error;
};

// Everything published in one test, in publish-plan order.
struct Ledger {
  std::vector<std::string> tenants;
  std::vector<Event> events;
  std::vector<PubRecord> records;  // parallel to events
  // Appends a workload (its tenants must be the ledger's, or the ledger is empty); returns
  // the index of its first event.
  size_t Add(const Workload& w);
};

// Fixed strings that must survive the pipeline verbatim: SQL quoting, JSON break-out,
// COPY text-format specials (\N, \., tab, newline, backslash), placeholders, odd Unicode.
const std::vector<std::string>& InjectionStrings();

std::string SchemaOf(const std::string& tenant);  // tenant_<lower(id)>

}  // namespace evp::chaos
