#include "postgres/set_writer.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <map>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "postgres/pg_store.hpp"

namespace evp::postgres {

using handlers::ColumnType;
using handlers::Mutation;
using handlers::TableDef;
using handlers::WriteKind;
using pipeline::ApplyOutcome;
using pipeline::ApplyResult;

namespace {

std::string Quoted(std::string_view name) { return "\"" + std::string(name) + "\""; }

}  // namespace

std::string QuoteIdent(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

namespace {

// Value of staged column `c` as stored: absent (NULL) stays NULL.
std::string Staged(const handlers::Column& c) {
  std::string v = "r." + Quoted(c.name);
  if (c.name == "is_deleted") return "COALESCE(" + v + ", false)";
  return v;
}

// A staged column as its table's type. Every data column arrives as text (NULL when the
// event does not carry it); text[] columns arrive as a JSON array.
std::string Typed(const std::string& v, ColumnType t) {
  switch (t) {
    case ColumnType::kText:
      return v;
    case ColumnType::kBigint:
      return v + "::bigint";
    case ColumnType::kBool:
      return v + "::boolean";
    case ColumnType::kJsonb:
      return v + "::jsonb";
    case ColumnType::kTextArray:
      return "CASE WHEN " + v + " IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(" +
             v + "::jsonb)) END";
  }
  return v;
}

// The rows of a 'u', 'p' or 'x' step: one array parameter of the table's row type (see
// AddRow), unnested into rows r(idx, the table's columns, ver_ts, ver_src, ver_seq).
std::string FromRows(const TableDef& def, const std::string& row_type) {
  std::string typed = "u.idx";
  for (const auto& c : def.columns) {
    typed += ", " + Typed("u." + Quoted(c.name), c.type) + " AS " + Quoted(c.name);
  }
  typed += ", u.ver_ts, u.ver_src, u.ver_seq";
  return " FROM (SELECT " + typed + " FROM unnest($1::" + row_type + "[]) AS u) AS r";
}

// The contact columns an onboarding message sets, and their bits in contacts.onboarded_cols
// (set while the column holds what onboarding wrote and no contact event has written since).
constexpr std::array<std::string_view, 4> kOnboardedColumns = {"chat_id", "origin", "tags",
                                                               "assigned_to"};

int OnboardedBit(std::string_view column) {
  for (size_t i = 0; i < kOnboardedColumns.size(); ++i) {
    if (kOnboardedColumns[i] == column) return 1 << i;
  }
  return 0;
}

// The bits of the onboarded columns whose value (`value_of(column)`) is not NULL.
template <typename ValueOf>
std::string MaskOf(ValueOf value_of) {
  std::string out = "(";
  for (std::string_view c : kOnboardedColumns) {
    if (out.size() > 1) out += " | ";
    out += "CASE WHEN " + value_of(c) + " IS NOT NULL THEN " + std::to_string(OnboardedBit(c)) +
           " ELSE 0 END";
  }
  return out + ")";
}

// 'u' upsert, 'p' update, 'x' the updates that a newer stored version makes stale.
std::string BuildSql(const std::string& table, const std::string& row_type, const TableDef& def,
                     char op) {
  const std::string from = FromRows(def, row_type);
  std::string keys;
  std::string key_match;
  for (size_t i = 0; i < def.key_count; ++i) {
    const std::string k = Quoted(def.columns[i].name);
    keys += (i ? ", " : "") + k;
    key_match += (i ? " AND " : "") + ("cur." + k + " = r." + k);
  }
  const std::string guard_new = op == 'u' ? "EXCLUDED" : "r";
  const std::string guard = "(cur.ver_ts, cur.ver_src, cur.ver_seq) <= (" + guard_new +
                            ".ver_ts, " + guard_new + ".ver_src, " + guard_new + ".ver_seq)";
  if (op == 'u') {
    std::string cols;
    std::string vals;
    std::string sets;
    for (size_t i = 0; i < def.columns.size(); ++i) {
      const auto& c = def.columns[i];
      cols += Quoted(c.name) + ", ";
      vals += Staged(c) + ", ";
      // Absent fields keep the stored value; is_deleted is never carried by an upsert.
      if (i >= def.key_count && c.name != "is_deleted") {
        sets += Quoted(c.name) + " = COALESCE(EXCLUDED." + Quoted(c.name) + ", cur." +
                Quoted(c.name) + "), ";
      }
    }
    if (def.table == handlers::Table::kContacts) {
      // A realtime contacts.upsert creating the contact is its first (see OnboardingSql); a
      // history item's contact counts as existing from the start.
      cols += "first_upsert_seq, ";
      vals += "CASE WHEN r.ver_src = 1 THEN r.ver_seq ELSE 0 END, ";
      return "INSERT INTO " + table + " AS cur (" + cols + "ver_ts, ver_src, ver_seq) SELECT " +
             vals + "r.ver_ts, r.ver_src, r.ver_seq" + from + " ON CONFLICT (" + keys + ") " +
             SetWriter::ContactsUpsertConflict() + " RETURNING " + keys;
    }
    return "INSERT INTO " + table + " AS cur (" + cols + "ver_ts, ver_src, ver_seq) SELECT " +
           vals + "r.ver_ts, r.ver_src, r.ver_seq" + from + " ON CONFLICT (" + keys +
           ") DO UPDATE SET " + sets +
           "ver_ts = EXCLUDED.ver_ts, ver_src = EXCLUDED.ver_src, ver_seq = EXCLUDED.ver_seq, "
           "updated_at = now() WHERE " +
           guard + " RETURNING " + keys;
  }
  if (op == 'p') {
    std::string sets;
    for (size_t i = def.key_count; i < def.columns.size(); ++i) {
      const auto& c = def.columns[i];
      if (c.name == "company_id") continue;
      std::string v = Staged(c);
      if (c.name == "is_deleted") v = "r.is_deleted";
      sets += Quoted(c.name) + " = COALESCE(" + v + ", cur." + Quoted(c.name) + "), ";
    }
    if (def.table == handlers::Table::kContacts) {
      sets += "onboarded_cols = cur.onboarded_cols & ~" +
              MaskOf([](std::string_view c) { return "r." + Quoted(c); }) + ", ";
    }
    return "UPDATE " + table + " AS cur SET " + sets +
           "ver_ts = r.ver_ts, ver_src = r.ver_src, ver_seq = r.ver_seq, updated_at = now()" +
           from + " WHERE " + key_match + " AND " + guard + " RETURNING r.idx";
  }
  return "SELECT r.idx" + from + " WHERE EXISTS (SELECT 1 FROM " + table + " AS cur WHERE " +
         key_match + " AND NOT " + guard + ")";
}

// A JSON string literal. The text is valid UTF-8 (validated on decode), so only quotes,
// backslashes and control characters need escaping.
void AppendJsonString(std::string& out, const std::string& s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += ch;
    }
  }
  out += '"';
}

// A one-dimensional array of a composite type in PostgreSQL's binary format (array_recv,
// record_recv), the parameter of every statement of a plan. Values go as they are (no quoting,
// no JSON): PostgreSQL casts only the non-text columns.
class RecordArray {
 public:
  static constexpr uint32_t kInt2 = 21, kInt4 = 23, kInt8 = 20, kText = 25, kTextArray = 1009;

  explicit RecordArray(uint32_t type) : type_(type) {
    out_.assign(kHeaderBytes, '\0');  // written by Take once the record count is known
  }

  // A record of `fields` fields follows (Int, Text, Null, TextArray), then End.
  void Begin(size_t fields) {
    ++records_;
    start_ = out_.size();
    Put(0, 4);  // the record's length, set by End
    Put(fields, 4);
  }
  void End() { Set(start_, out_.size() - start_ - 4); }

  void Int(uint32_t type, uint64_t v, int bytes) {
    Put((uint64_t{type} << 32) | static_cast<uint64_t>(bytes), 8);
    Put(v, bytes);
  }
  void Text(std::string_view v) {
    Put((uint64_t{kText} << 32) | v.size(), 8);
    out_ += v;
  }
  void Null(uint32_t type) {
    Put((uint64_t{type} << 32) | 0xffffffffu, 8);  // length -1
  }
  void TextArray(const std::vector<std::string>& items) {
    Put(kTextArray, 4);
    const size_t start = out_.size();
    Put(0, 4);                      // the field's length, set below
    Put(items.empty() ? 0 : 1, 4);  // dimensions (an empty array has none)
    Put(0, 4);                      // no NULL elements
    Put(kText, 4);
    if (!items.empty()) {
      Put(items.size(), 4);
      Put(1, 4);  // lower bound
    }
    for (const auto& item : items) {
      Put(item.size(), 4);
      out_ += item;
    }
    Set(start, out_.size() - start - 4);
  }

  bool empty() const { return records_ == 0; }
  void Reserve(size_t bytes) { out_.reserve(out_.size() + bytes); }

  // The finished array.
  std::string Take() {
    Set(0, 1);  // one dimension
    Set(4, 0);  // no NULL elements
    Set(8, type_);
    Set(12, records_);  // its length
    Set(16, 1);         // its lower bound
    return std::move(out_);
  }

 private:
  static constexpr size_t kHeaderBytes = 20;

  // `bytes` bytes of v, most significant first (network order).
  void Put(uint64_t v, int bytes) {
    std::array<char, 8> buf{};
    for (int b = 0; b < bytes; ++b) {
      buf[static_cast<size_t>(b)] = static_cast<char>((v >> (8 * (bytes - 1 - b))) & 0xff);
    }
    out_.append(buf.data(), static_cast<size_t>(bytes));
  }
  // A 4-byte integer at `at`.
  void Set(size_t at, uint64_t v) {
    for (size_t b = 0; b < 4; ++b) {
      out_[at + b] = static_cast<char>((v >> (8 * (3 - b))) & 0xff);
    }
  }

  uint32_t type_;
  std::string out_;  // header room, then the records
  size_t records_ = 0;
  size_t start_ = 0;  // of the record being written
};

// A record of a table's row type (ops migration 0003): idx int4, one text field per column,
// ver_ts int8, ver_src int2, ver_seq int8. Columns the event does not carry are NULL.
// Bytes AddRow writes for `m`: field headers, the fixed-size fields, then the texts.
size_t RowBytes(const TableDef& def, const Mutation& m) {
  size_t bytes = 8 + 8 * (def.columns.size() + 4) + 4 + 8 + 2 + 8;
  for (const auto& v : m.values) bytes += v.text.size();
  return bytes;
}

void AddRow(RecordArray& rows, const TableDef& def, size_t idx, const Mutation& m) {
  rows.Begin(def.columns.size() + 4);
  rows.Int(RecordArray::kInt4, idx, 4);
  // A mutation's values point into its table's columns, in column order (BuildMutation).
  size_t next = 0;
  for (const auto& v : m.values) {
    const auto c = static_cast<size_t>(v.column - def.columns.data());
    for (; next < c; ++next) rows.Null(RecordArray::kText);
    rows.Text(v.text);
    next = c + 1;
  }
  for (; next < def.columns.size(); ++next) rows.Null(RecordArray::kText);
  rows.Int(RecordArray::kInt8, static_cast<uint64_t>(m.version.seconds), 8);
  rows.Int(RecordArray::kInt2, static_cast<uint64_t>(m.version.source), 2);
  rows.Int(RecordArray::kInt8, m.version.seq, 8);
  rows.End();
}

// A record of rows_onboarding (ops migration 0004).
void AddOnboarding(RecordArray& rows, const Mutation& m) {
  const auto& ob = *m.onboarding;
  rows.Begin(8);
  for (const std::string* v :
       {&ob.agent_id, &ob.phone_number, &ob.chat_id, &ob.message_id, &ob.origin}) {
    rows.Text(*v);
  }
  rows.TextArray(ob.tags);
  rows.Text(ob.assigned_to);
  rows.Int(RecordArray::kInt8, m.version.seq, 8);
  rows.End();
}

// A record of rows_first_upserts (ops migration 0004).
void AddFirstUpsert(RecordArray& rows, const Mutation& m) {
  rows.Begin(3);
  rows.Text(m.values.at(0).text);
  rows.Text(m.values.at(1).text);
  rows.Int(RecordArray::kInt8, m.version.seq, 8);
  rows.End();
}

std::string KeyOf(const Mutation& m, size_t key_count) {
  std::string k;
  for (size_t i = 0; i < key_count && i < m.values.size(); ++i) {
    k += m.values[i].text;
    k += '\x1f';
  }
  return k;
}

}  // namespace

std::string SetWriter::OnboardingSql(char op, const std::string& schema,
                                     const std::string& array_type) {
  // 'o' onboards (below); 'c' records first realtime upserts (at the end).
  const auto rows = [&](const char* columns) {
    return array_type.empty() ? "jsonb_to_recordset($1::jsonb) AS x(" + std::string(columns) + ")"
                              : "unnest($1::" + array_type + "[]) AS x";
  };
  const std::string candidates =
      "WITH r AS (SELECT DISTINCT ON (agent_id, phone_number) * FROM " +
      rows(
          "agent_id text, phone_number text, chat_id text, message_id text, origin text, tags "
          "text[], assigned_to text, seq bigint") +
      " ORDER BY agent_id, phone_number, seq)";
  const std::string log_insert =
      " INSERT INTO " + schema +
      ".onboarding_log (agent_id, phone_number, company_id, chat_id, message_id, origin, tags, "
      "stream_seq) SELECT r.agent_id, r.phone_number, $2, NULLIF(r.chat_id, ''), r.message_id, "
      "r.origin, r.tags, r.seq FROM r JOIN ";
  // The value an onboarding message gives contact column `c`.
  const auto value = [](std::string_view c) {
    return c == "tags" ? std::string("r.tags") : "NULLIF(r." + Quoted(c) + ", '')";
  };
  if (op == 'o') {
    // An unknown contact is created with the lowest version (any real contact event
    // overrides it). A known one is taken over when this message comes before its first
    // realtime contacts.upsert and before the message that onboarded it so far: the columns
    // that still hold what onboarding wrote, or nothing, take this message's values; what
    // contact events wrote stays, as it would on top of this message's onboarding. ON
    // CONFLICT judges the latest version of the row, also one a concurrent writer (a
    // replica, the DLQ worker) committed while this statement waited for it.
    std::string sets = "onboard_seq = EXCLUDED.onboard_seq";
    std::string mask = "(";
    for (std::string_view c : kOnboardedColumns) {
      const std::string col = Quoted(c);
      const std::string bit = std::to_string(OnboardedBit(c));
      const std::string take = "(cur.onboarded_cols & " + bit + " <> 0 OR cur." + col + " IS NULL)";
      sets += ", " + col + " = CASE WHEN " + take + " THEN EXCLUDED." + col + " ELSE cur." + col +
              " END";
      mask += (mask.size() > 1 ? " | " : "") + std::string("CASE WHEN ") + take + " AND EXCLUDED." +
              col + " IS NOT NULL THEN " + bit + " ELSE 0 END";
    }
    sets += ", onboarded_cols = " + mask + ")";
    return candidates + ", onboarded AS (INSERT INTO " + schema +
           ".contacts AS cur (agent_id, phone_number, company_id, chat_id, origin, tags, "
           "assigned_to, ver_ts, ver_src, ver_seq, onboard_seq, first_upsert_seq, "
           "onboarded_cols) SELECT agent_id, phone_number, $2, NULLIF(chat_id, ''), origin, "
           "tags, NULLIF(assigned_to, ''), 0, 0, 0, seq, NULL, " +
           MaskOf(value) + " FROM r ON CONFLICT (agent_id, phone_number) DO UPDATE SET " + sets +
           " WHERE COALESCE(cur.first_upsert_seq > EXCLUDED.onboard_seq, true) AND "
           "COALESCE(cur.onboard_seq > EXCLUDED.onboard_seq, true) RETURNING agent_id, "
           "phone_number)" +
           log_insert +
           "onboarded USING (agent_id, phone_number) ON CONFLICT (agent_id, phone_number) DO "
           "UPDATE SET chat_id = EXCLUDED.chat_id, message_id = EXCLUDED.message_id, origin = "
           "EXCLUDED.origin, tags = EXCLUDED.tags, stream_seq = EXCLUDED.stream_seq, updated_at = "
           "now() WHERE "
           "onboarding_log.stream_seq > EXCLUDED.stream_seq";
  }
  // 'c', after the contacts.upsert rows are written: a contact that a later message
  // onboarded existed earlier in stream order, so its log row goes. (The upsert itself
  // replaced what only that onboarding had written and lowered first_upsert_seq when it
  // applied, see ContactsUpsertConflict; the UPDATE here is for the stale ones.)
  return "WITH r AS (SELECT agent_id, phone_number, min(seq) AS seq FROM " +
         rows("agent_id text, phone_number text, seq bigint") +
         " GROUP BY agent_id, phone_number), lowered AS (UPDATE " + schema +
         ".contacts AS cur SET first_upsert_seq = r.seq, onboard_seq = CASE WHEN "
         "cur.onboard_seq > r.seq THEN NULL ELSE cur.onboard_seq END FROM r WHERE cur.agent_id "
         "= r.agent_id AND cur.phone_number = r.phone_number AND COALESCE(cur.first_upsert_seq "
         "> r.seq, true)) DELETE FROM " +
         schema +
         ".onboarding_log AS l USING r WHERE l.agent_id = r.agent_id AND l.phone_number = "
         "r.phone_number AND l.stream_seq > r.seq";
}

std::string SetWriter::ContactsUpsertConflict() {
  const TableDef& def = handlers::Definition(handlers::Table::kContacts);
  // newer: the usual version guard. first: this realtime upsert comes before the message
  // that onboarded the contact and before any other realtime upsert of it, so in stream
  // order it created the contact and the onboarding never happened. It then applies even
  // when a later event already wrote the contact: under those events' values (it is older),
  // but over what only onboarding wrote, which it replaces.
  const std::string newer =
      "(cur.ver_ts, cur.ver_src, cur.ver_seq) <= (EXCLUDED.ver_ts, EXCLUDED.ver_src, "
      "EXCLUDED.ver_seq)";
  const std::string first =
      "(EXCLUDED.ver_src = 1 AND cur.onboard_seq > EXCLUDED.ver_seq AND "
      "COALESCE(cur.first_upsert_seq > EXCLUDED.ver_seq, true))";
  std::string sets;
  for (size_t i = def.key_count; i < def.columns.size(); ++i) {
    const std::string col = Quoted(def.columns[i].name);
    const std::string ex = "EXCLUDED." + col;
    const std::string cu = "cur." + col;
    sets += col + " = CASE ";
    if (const int bit = OnboardedBit(def.columns[i].name); bit != 0) {
      sets += "WHEN " + first + " AND cur.onboarded_cols & " + std::to_string(bit) + " <> 0 THEN " +
              ex + " ";
    }
    sets += "WHEN " + newer + " THEN COALESCE(" + ex + ", " + cu + ") ELSE COALESCE(" + cu + ", " +
            ex + ") END, ";
  }
  sets += "onboarded_cols = CASE WHEN " + first + " THEN 0 ELSE cur.onboarded_cols & ~" +
          MaskOf([](std::string_view c) { return "EXCLUDED." + Quoted(c); }) + " END, ";
  // What the 'c' statement records, done here when the row is written anyway (a second
  // write of the same row in the transaction would cost a second row version).
  const std::string earliest =
      "(EXCLUDED.ver_src = 1 AND COALESCE(cur.first_upsert_seq > EXCLUDED.ver_seq, true))";
  sets += "first_upsert_seq = CASE WHEN " + earliest +
          " THEN EXCLUDED.ver_seq ELSE cur.first_upsert_seq END, onboard_seq = CASE WHEN " + first +
          " THEN NULL ELSE cur.onboard_seq END, ";
  for (std::string_view v : {"ver_ts", "ver_src", "ver_seq"}) {
    sets += std::string(v) + " = CASE WHEN " + newer + " THEN EXCLUDED." + std::string(v) +
            " ELSE cur." + std::string(v) + " END, ";
  }
  return "DO UPDATE SET " + sets + "updated_at = now() WHERE " + newer + " OR " + first;
}

int SetWriter::OnboardedBits(const Mutation& m) {
  int bits = 0;
  for (const auto& v : m.values) bits |= OnboardedBit(v.column->name);
  return bits;
}

void SetWriter::AppendOnboarding(std::string& array, const Mutation& m) {
  const auto& ob = *m.onboarding;
  array += array.empty() ? "[{\"agent_id\":" : ",{\"agent_id\":";
  AppendJsonString(array, ob.agent_id);
  array += ",\"phone_number\":";
  AppendJsonString(array, ob.phone_number);
  array += ",\"chat_id\":";
  AppendJsonString(array, ob.chat_id);
  array += ",\"message_id\":";
  AppendJsonString(array, ob.message_id);
  array += ",\"origin\":";
  AppendJsonString(array, ob.origin);
  array += ",\"tags\":[";
  for (size_t i = 0; i < ob.tags.size(); ++i) {
    if (i > 0) array += ',';
    AppendJsonString(array, ob.tags[i]);
  }
  array += ']';
  array += ",\"assigned_to\":";
  AppendJsonString(array, ob.assigned_to);
  array += ",\"seq\":" + std::to_string(m.version.seq) + "}";
}

void SetWriter::AppendContactSeq(std::string& array, const Mutation& m) {
  array += array.empty() ? "[{\"agent_id\":" : ",{\"agent_id\":";
  AppendJsonString(array, m.values.at(0).text);
  array += ",\"phone_number\":";
  AppendJsonString(array, m.values.at(1).text);
  array += ",\"seq\":" + std::to_string(m.version.seq) + "}";
}

bool SetWriter::MarksFirstUpsert(const Mutation& m) {
  return m.table == handlers::Table::kContacts && m.kind == WriteKind::kUpsert &&
         m.version.source == Source::kRealtime;
}

std::string SetWriter::StepSql(const WriteStep& step) const {
  const std::string schema = QuoteIdent(step.schema);
  if (step.op == 'o') return OnboardingSql(step.op, schema, RowTypeRef(kOnboardingRows));
  if (step.op == 'c') return OnboardingSql(step.op, schema, RowTypeRef(kFirstUpsertRows));
  return BuildSql(schema + "." + Quoted(step.def->name),
                  RowTypeRef(static_cast<size_t>(step.def->table)), *step.def, step.op);
}

std::string SetWriter::RowTypeRef(size_t type) const {
  return QuoteIdent(ops_schema_) + "." + RowTypeName(type);
}

std::string SetWriter::RowTypeName(size_t type) {
  if (type == kOnboardingRows) return "rows_onboarding";
  if (type == kFirstUpsertRows) return "rows_first_upserts";
  return "rows_" + std::string(handlers::Definition(static_cast<handlers::Table>(type)).name);
}

std::string SetWriter::RowTypeColumns(size_t type) {
  if (type == kOnboardingRows) {
    return "agent_id text, phone_number text, chat_id text, message_id text, origin text, "
           "tags text[], assigned_to text, seq bigint";
  }
  if (type == kFirstUpsertRows) return "agent_id text, phone_number text, seq bigint";
  std::string out = "idx integer";
  for (const auto& c : handlers::Definition(static_cast<handlers::Table>(type)).columns) {
    out += ", " + std::string(c.name) + " text";
  }
  return out + ", ver_ts bigint, ver_src smallint, ver_seq bigint";
}

void SetWriter::PlanGroup(std::span<const Mutation> all, const std::vector<size_t>& indices,
                          std::vector<ApplyResult>& out, std::vector<WriteStep>& steps) const {
  const Mutation& first = all[indices.front()];
  const TableDef& def = handlers::Definition(first.table);
  const std::string schema = TenantSchemaName(tenant_prefix_, first.company_id);
  // Rounds: the k-th mutation of each key goes to round k.
  std::vector<std::string> keys;  // of indices[p]
  keys.reserve(indices.size());
  for (size_t i : indices) keys.push_back(KeyOf(all[i], def.key_count));
  std::vector<std::vector<size_t>> rounds;  // positions in indices
  {
    std::unordered_map<std::string_view, size_t> seen;
    seen.reserve(indices.size());
    for (size_t p = 0; p < indices.size(); ++p) {
      const size_t r = seen[keys[p]]++;
      if (rounds.size() <= r) rounds.emplace_back();
      rounds[r].push_back(p);
    }
  }
  const uint32_t row_type = row_types_[static_cast<size_t>(def.table)];
  for (const auto& round : rounds) {
    WriteStep upsert{schema, &def, 'u', {}, {}, {}, true};
    WriteStep update{schema, &def, 'p', {}, {}, {}, true};
    RecordArray upsert_rows(row_type);
    RecordArray update_rows(row_type);
    size_t upsert_bytes = 0;
    size_t update_bytes = 0;
    for (size_t p : round) {
      const Mutation& m = all[indices[p]];
      (m.kind == WriteKind::kUpsert ? upsert_bytes : update_bytes) += RowBytes(def, m);
    }
    upsert_rows.Reserve(upsert_bytes);
    update_rows.Reserve(update_bytes);
    for (size_t p : round) {
      const size_t i = indices[p];
      const Mutation& m = all[i];
      if (m.kind == WriteKind::kUpsert) {
        AddRow(upsert_rows, def, i, m);
        upsert.upsert_by_key[std::move(keys[p])] = i;
        out[i] = {ApplyOutcome::kStale, ""};
      } else {
        AddRow(update_rows, def, i, m);
        update.indices.push_back(i);
        // Until proven stale: a row missing now, or committed by another writer after the
        // UPDATE's snapshot, must be retried, never dropped.
        out[i] = {ApplyOutcome::kNotYet, m.KeyText()};
      }
    }
    if (!upsert_rows.empty()) {
      upsert.params = {upsert_rows.Take()};
      steps.push_back(std::move(upsert));
    }
    if (!update_rows.empty()) {
      update.params = {update_rows.Take()};
      WriteStep check = update;
      check.op = 'x';
      steps.push_back(std::move(update));
      steps.push_back(std::move(check));
    }
  }
}

std::vector<WriteStep> SetWriter::Plan(std::span<const Mutation> mutations,
                                       std::vector<ApplyResult>& out) const {
  out.assign(mutations.size(), ApplyResult{});
  std::vector<WriteStep> steps;
  // Groups by (tenant, table), in order of first appearance.
  std::vector<std::vector<size_t>> groups;
  constexpr size_t kNoGroup = SIZE_MAX;
  std::unordered_map<std::string_view, std::array<size_t, 4>> group_of;  // tenant -> by table
  for (size_t i = 0; i < mutations.size(); ++i) {
    auto [it, inserted] = group_of.try_emplace(mutations[i].company_id);
    if (inserted) it->second.fill(kNoGroup);
    size_t& group = it->second.at(static_cast<size_t>(mutations[i].table));
    if (group == kNoGroup) {
      group = groups.size();
      groups.emplace_back();
    }
    groups[group].push_back(i);
  }

  // Onboarding in stream order (see OnboardingSql), per tenant: contacts created, then taken
  // over, before the batch's contact writes; the first realtime contacts.upsert of each
  // contact after them. A message that a contacts.upsert of its (agent, phone) in the batch
  // precedes in the stream does not onboard: that saves creating a log row only to delete it.
  std::unordered_map<std::string, uint64_t> first_contact_upsert;  // tenant + key -> sequence
  std::map<std::string, RecordArray> marks;                        // tenant -> first upserts
  for (const Mutation& m : mutations) {
    if (!MarksFirstUpsert(m)) continue;
    auto [it, inserted] =
        first_contact_upsert.try_emplace(m.company_id + '\x1e' + KeyOf(m, 2), m.version.seq);
    if (!inserted) it->second = std::min(it->second, m.version.seq);
    AddFirstUpsert(marks.try_emplace(m.company_id, row_types_[kFirstUpsertRows]).first->second, m);
  }
  std::map<std::string, RecordArray> onboard;  // tenant -> onboarding messages
  for (const Mutation& m : mutations) {
    if (!m.onboarding) continue;
    const auto& ob = *m.onboarding;
    const auto known = first_contact_upsert.find(m.company_id + '\x1e' + ob.agent_id + '\x1f' +
                                                 ob.phone_number + '\x1f');
    if (known != first_contact_upsert.end() && known->second < m.version.seq) continue;
    AddOnboarding(onboard.try_emplace(m.company_id, row_types_[kOnboardingRows]).first->second, m);
  }
  steps.reserve(onboard.size() + groups.size() + marks.size());
  for (auto& [tenant, rows] : onboard) {
    steps.push_back({TenantSchemaName(tenant_prefix_, tenant),
                     nullptr,
                     'o',
                     {rows.Take(), tenant},
                     {},
                     {},
                     true});
  }
  for (const auto& g : groups) PlanGroup(mutations, g, out, steps);
  for (auto& [tenant, rows] : marks) {
    steps.push_back(
        {TenantSchemaName(tenant_prefix_, tenant), nullptr, 'c', {rows.Take()}, {}, {}, true});
  }
  return steps;
}

bool SetWriter::Needed(const WriteStep& step, const std::vector<ApplyResult>& out) {
  if (step.op != 'x') return true;
  for (size_t i : step.indices) {
    if (out[i].outcome != ApplyOutcome::kApplied) return true;
  }
  return false;
}

void SetWriter::Interpret(const WriteStep& step, const ResultRows& rows,
                          std::vector<ApplyResult>& out) {
  // The mutation a 'p' or 'x' row names by its idx (the statements return only indices they
  // were given; anything else is ignored).
  const auto index = [&](size_t row) -> std::optional<size_t> {
    const std::string_view v = rows.Value(row, 0);
    size_t i = 0;
    const auto [end, error] = std::from_chars(v.data(), v.data() + v.size(), i);
    if (error != std::errc{} || end != v.data() + v.size() || i >= out.size()) return std::nullopt;
    return i;
  };
  switch (step.op) {
    case 'u': {
      std::string k;
      for (size_t row = 0; row < rows.Size(); ++row) {
        k.clear();
        for (size_t col = 0; col < rows.Columns(); ++col) {
          k += rows.Value(row, col);
          k += '\x1f';
        }
        if (auto it = step.upsert_by_key.find(k); it != step.upsert_by_key.end()) {
          out[it->second] = {ApplyOutcome::kApplied, ""};
        }
      }
      break;
    }
    case 'p':
      for (size_t row = 0; row < rows.Size(); ++row) {
        if (const auto i = index(row)) out[*i] = {ApplyOutcome::kApplied, ""};
      }
      break;
    case 'x':
      for (size_t row = 0; row < rows.Size(); ++row) {
        const auto i = index(row);
        if (i && out[*i].outcome != ApplyOutcome::kApplied) out[*i] = {ApplyOutcome::kStale, ""};
      }
      break;
    default:
      break;
  }
}

std::string SetWriter::StatementName(const WriteStep& step) {
  const std::string key =
      step.schema + "/" + (step.def ? std::string(step.def->name) : "") + "/" + step.op;
  auto [it, inserted] = names_.try_emplace(key);
  // Statement names stay short (identifiers are cut at 63 bytes): a counter, not the schema.
  if (inserted) it->second = "evp_w" + std::to_string(names_.size());
  return it->second;
}

}  // namespace evp::postgres
