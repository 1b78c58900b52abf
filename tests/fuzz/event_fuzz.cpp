// libFuzzer target: an event body through the same steps as pipeline::BatchProcessor, without
// I/O: DecodeEvent -> ValidateEvent against every event type -> for valid realtime documents
// EventVersion + BuildMutation; for valid history envelopes each item validated alone and
// mapped. Untrusted bytes must never crash or throw, failures must be safe to log, and a
// mutation of a valid document must be storable (keys present, jsonb parses, no NUL).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "core/event.hpp"
#include "fuzz_check.hpp"
#include "handlers/mutation.hpp"
#include "validation/decoder.hpp"
#include "validation/json_spans.hpp"
#include "validation/schema_registry.hpp"
#include "validation/utf8.hpp"

namespace {

using evp::EventType;
using evp::fuzz::Check;
using Json = nlohmann::json;

constexpr size_t kMaxEventBytes = 921'600;  // MAX_EVENT_BYTES default
constexpr int64_t kNow = 1'700'000'000;
constexpr int64_t kPublishSeconds = kNow - 60;
constexpr uint64_t kStreamSeq = 42;
const std::string kCompany = "acme";

const evp::validation::SchemaRegistry& Registry() {
  static const evp::validation::SchemaRegistry reg = [] {
    auto loaded = evp::validation::SchemaRegistry::LoadEmbedded();
    if (!loaded) {
      std::fprintf(stderr, "cannot load embedded schemas: %s\n", loaded.error().c_str());
      std::abort();
    }
    return std::move(loaded).value();
  }();
  return reg;
}

bool IsUtf8(std::string_view s) { return !evp::validation::FindInvalidUtf8(s).has_value(); }

// Failure messages end up in logs and in exhausted_events.reason.
void CheckFailureText(const evp::Failure& f) {
  Check(IsUtf8(f.message), "failure message is not UTF-8", f.message);
  Check(!evp::fuzz::HasControl(f.message), "failure message has control bytes", f.message);
  Check(!f.message.empty(), "failure message is empty");
}

void CheckSchemaFailure(const evp::Failure& f) {
  Check(f.code == evp::ReasonCode::kSchemaViolation, "ValidateEvent code", f.Reason());
  CheckFailureText(f);
  const std::string_view m = f.message;
  const bool own_rule = m.ends_with(": more than 24h in the future") ||
                        m.ends_with(": contains U+0000, which cannot be stored");
  // SchemaRegistry::Validate documents the bound; the other two rules name a path.
  if (!own_rule) {
    Check(m.size() <= evp::validation::kMaxMessageBytes, "schema message too long", m);
  }
}

void CheckMutation(EventType type, const Json& doc, const evp::handlers::Mutation& m,
                   const evp::Version& version) {
  using evp::handlers::ColumnType;
  const evp::handlers::TableDef& def = evp::handlers::Definition(m.table);
  Check(m.company_id == kCompany, "mutation company_id");
  Check(m.version == version, "mutation version");
  Check(m.values.size() >= def.key_count, "mutation lacks key columns", m.KeyText());
  size_t next = 0;  // values follow TableDef order, each column at most once
  bool saw_company = false;
  for (size_t i = 0; i < m.values.size(); ++i) {
    const evp::handlers::Value& v = m.values[i];
    const evp::handlers::Column* first = def.columns.data();
    Check(v.column >= first + next && v.column < first + def.columns.size(),
          "value column out of TableDef order", v.column->name);
    next = static_cast<size_t>(v.column - first) + 1;
    if (i < def.key_count) {
      Check(v.column == first + i, "key column missing (schema requires every key)",
            def.columns[i].name);
    }
    if (v.column->name == "company_id") {
      saw_company = true;
      Check(v.text == kCompany, "company_id value");
    }
    Check(v.text.find('\0') == std::string::npos, "value has NUL", v.column->name);
    Check(IsUtf8(v.text), "value is not UTF-8", v.column->name);
    switch (v.column->type) {
      case ColumnType::kText:
        break;
      case ColumnType::kBigint:
        // Every integer field of the schemas has minimum 0.
        Check(!v.text.empty() && v.text.find_first_not_of("0123456789") == std::string::npos,
              "bigint text is not a non-negative integer", v.text);
        break;
      case ColumnType::kBool:
        Check(v.text == "true" || v.text == "false", "bool text", v.text);
        break;
      case ColumnType::kJsonb:
      case ColumnType::kTextArray: {
        // Exact text or a re-serialisation: either way the same value as in the document.
        const Json parsed = Json::parse(v.text, nullptr, false);
        Check(!parsed.is_discarded(), "jsonb text does not parse", v.column->name);
        Check(parsed == doc.at(std::string(v.column->name)), "jsonb value differs from the event",
              v.column->name);
        break;
      }
    }
  }
  Check(saw_company, "mutation without company_id");
  if (m.onboarding) {
    Check(type == EventType::kMessagesUpsert && version.source == evp::Source::kRealtime,
          "onboarding outside realtime messages.upsert");
    Check(doc.value("flow", "") == "IN", "onboarding without flow IN");
    Check(!m.onboarding->agent_id.empty() && !m.onboarding->phone_number.empty(),
          "onboarding without agent_id or from_phone");
  }
}

void CheckVersion(EventType type, const Json& doc, const evp::Version& v, evp::Source source) {
  Check(v.source == source && v.seq == kStreamSeq, "version source/seq");
  const char* field = nullptr;
  switch (type) {
    case EventType::kChatsUpsert:
    case EventType::kChatsUpdate:
      field = "conversation_timestamp";
      break;
    case EventType::kMessagesUpsert:
      field = "message_timestamp";
      break;
    case EventType::kMessagesUpdate:
      field = "timestamp";
      break;
    default:
      break;
  }
  if (field != nullptr && doc.contains(field)) {
    Check(v.seconds >= 0 && v.seconds <= kNow + evp::validation::kMaxFutureSeconds,
          "version of a valid event outside [0, now + 24h]", field);
  } else {
    Check(v.seconds == kPublishSeconds, "version without time field is not publish time");
  }
}

// The tenant check of BatchProcessor: a payload company_id must equal the subject's.
bool SameTenant(const Json& obj) {
  auto it = obj.find("company_id");
  return it == obj.end() || !it->is_string() || it->get<std::string>() == kCompany;
}

// `text`: the exact JSON text of `doc` (the event's bytes, or a history item's span).
void Map(EventType type, const Json& doc, evp::Source source, std::string_view text) {
  if (!SameTenant(doc)) return;
  const evp::Version v =
      evp::handlers::EventVersion(type, doc, kPublishSeconds, source, kStreamSeq);
  CheckVersion(type, doc, v, source);
  const evp::handlers::Mutation m = evp::handlers::BuildMutation(type, doc, kCompany, v, text);
  CheckMutation(type, doc, m, v);
  if (source == evp::Source::kHistory) Check(!m.onboarding, "onboarding from history");
}

void Run(std::string_view bytes) {
  auto decoded = evp::validation::DecodeEvent(bytes, kMaxEventBytes);
  if (!decoded.ok()) {
    const evp::Failure& f = decoded.error();
    Check(f.code == evp::ReasonCode::kMalformedJson || f.code == evp::ReasonCode::kTooLarge,
          "DecodeEvent code", f.Reason());
    CheckFailureText(f);
    Check(f.message.size() <= 512, "DecodeEvent message too long", f.message);
    if (f.code != evp::ReasonCode::kMalformedJson) return;
    // A refused history envelope is split into its items, each judged alone: every span
    // lies inside the bytes, and each goes through the same decoding and validation.
    for (EventType type :
         {EventType::kHistoryChats, EventType::kHistoryMessages, EventType::kHistoryContacts}) {
      auto salvaged = evp::validation::SalvageArrayElementSpans(bytes, evp::HistoryArrayKey(type));
      if (!salvaged) continue;
      for (std::string_view item_text : salvaged->elements) {
        Check(item_text.data() >= bytes.data() &&
                  item_text.data() + item_text.size() <= bytes.data() + bytes.size(),
              "salvaged item outside the bytes");
        auto item = evp::validation::DecodeEvent(item_text, kMaxEventBytes);
        if (!item.ok()) continue;
        const EventType item_type = evp::HistoryItemType(type);
        if (auto invalid = evp::validation::ValidateEvent(Registry(), item_type, *item, kNow)) {
          CheckSchemaFailure(*invalid);
          continue;
        }
        Map(item_type, *item, evp::Source::kHistory, item_text);
      }
    }
    return;
  }
  const Json& doc = decoded.value();
  // Accepted bytes are valid UTF-8 and so is every string in the document: a strict dump
  // (what jsonb and the DLQ receive) must not throw.
  (void)doc.dump();

  const auto& reg = Registry();
  for (EventType type : evp::kAllEventTypes) {
    if (auto invalid = evp::validation::ValidateEvent(reg, type, doc, kNow)) {
      CheckSchemaFailure(*invalid);
      continue;
    }
    Check(doc.is_object(), "a non-object validated", evp::EventTypeName(type));
    if (!evp::IsHistory(type)) {
      Map(type, doc, evp::Source::kRealtime, bytes);
      continue;
    }
    if (!SameTenant(doc)) continue;
    const EventType item_type = evp::HistoryItemType(type);
    const auto it = doc.find(std::string(evp::HistoryArrayKey(type)));
    Check(it != doc.end() && it->is_array(), "valid history envelope without its array",
          evp::EventTypeName(type));
    const auto spans = evp::validation::ArrayElementSpans(bytes, evp::HistoryArrayKey(type));
    Check(!spans || spans->size() == it->size(), "item spans differ from the items in number");
    for (size_t j = 0; j < it->size(); ++j) {
      const Json& item = (*it)[j];
      if (auto invalid = evp::validation::ValidateEvent(reg, item_type, item, kNow)) {
        CheckSchemaFailure(*invalid);
        // A bad item is dead-lettered with its own JSON as the original bytes.
        (void)item.dump(-1, ' ', false, Json::error_handler_t::replace);
        continue;
      }
      Map(item_type, item, evp::Source::kHistory,
          spans && j < spans->size() ? (*spans)[j] : std::string_view());
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)Registry();  // load once, outside the measured inputs
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    Run(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const std::exception& e) {
    evp::fuzz::Fail("exception escaped", e.what());
  }
  return 0;
}
