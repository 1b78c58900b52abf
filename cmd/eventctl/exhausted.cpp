#include "exhausted.hpp"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/dead_letter.hpp"
#include "core/text.hpp"
#include "nats/jetstream.hpp"
#include "postgres/exhausted_repo.hpp"
#include "routing/subject.hpp"

namespace evp::eventctl {
namespace {

struct Options {
  postgres::ExhaustedFilter filter;
  bool all = false;  // include resolved rows
  bool only_resolved = false;
  bool json = false;
  bool dry_run = false;
  std::vector<int64_t> ids;
  int64_t id = 0;
  std::string note;
};

// At most about n bytes for a table cell, cut at a UTF-8 character boundary.
std::string Truncate(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  size_t cut = n - 3;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return s.substr(0, cut) + "...";
}

nlohmann::json RowJson(const postgres::ExhaustedRow& r, bool with_payload) {
  nlohmann::json j = {{"id", r.id},
                      {"company_id", r.company_id},
                      {"source_subject", r.source_subject},
                      {"error_class", r.error_class},
                      {"reason", r.reason},
                      {"attempts", r.attempts},
                      {"first_failed_at", r.first_failed_at},
                      {"last_failed_at", r.last_failed_at},
                      {"resolved", r.resolved},
                      {"resolved_at", r.resolved_at},
                      {"notes", r.notes},
                      {"dlq_metadata", nlohmann::json::parse(r.metadata_json, nullptr, false)}};
  if (with_payload) {
    if (IsValidUtf8(r.payload)) {
      j["payload"] = r.payload;
    } else {
      j["payload_hex"] = HexEncode(r.payload);
    }
  }
  return j;
}

postgres::ExhaustedFilter FilterOf(const Options& o) {
  postgres::ExhaustedFilter f = o.filter;
  f.ids = o.ids;
  if (o.all) f.resolved = std::nullopt;
  if (o.only_resolved) f.resolved = true;
  return f;
}

// 0 when --since and --until are times PostgreSQL reads, else the exit code (2: a usage
// error, with the option named; 1: the database could not be asked).
int CheckTimes(postgres::ExhaustedRepository& repo, const Options& o) {
  for (const auto& [flag, text] :
       {std::pair<const char*, const std::string&>{"--since", o.filter.since},
        {"--until", o.filter.until}}) {
    if (text.empty()) continue;
    auto error = repo.TimeError(text);
    if (!error.ok()) {
      std::fprintf(stderr, "%s\n", error.error().c_str());
      return 1;
    }
    if (!error->empty()) {
      std::fprintf(stderr, "%s: '%s' is not a time (e.g. '2026-11-25 10:00Z'): %s\n", flag,
                   text.c_str(), error->c_str());
      return 2;
    }
  }
  return 0;
}

int List(const Config& config, const Options& o) {
  postgres::ExhaustedRepository repo(config.postgres_dsn, config.ops_schema);
  if (int rc = CheckTimes(repo, o); rc != 0) return rc;
  auto rows = repo.List(FilterOf(o), false);
  if (!rows.ok()) {
    std::fprintf(stderr, "%s\n", rows.error().c_str());
    return 1;
  }
  if (o.json) {
    for (const auto& r : *rows) std::cout << RowJson(r, false).dump() << "\n";
    return 0;
  }
  std::printf("%-8s %-20s %-34s %-9s %-3s %-19s %-3s %s\n", "ID", "TENANT", "SUBJECT", "CLASS",
              "ATT", "LAST FAILED (UTC)", "RES", "REASON");
  for (const auto& r : *rows) {
    std::printf("%-8lld %-20s %-34s %-9s %-3lld %-19s %-3s %s\n", static_cast<long long>(r.id),
                Truncate(r.company_id, 20).c_str(), Truncate(r.source_subject, 34).c_str(),
                r.error_class.c_str(), static_cast<long long>(r.attempts),
                r.last_failed_at.substr(0, 19).c_str(), r.resolved ? "yes" : "no",
                Truncate(r.reason, 100).c_str());
  }
  std::printf(
      "%zu row(s)%s\n", rows->size(),
      static_cast<int64_t>(rows->size()) == o.filter.limit ? " (limit reached: --limit)" : "");
  return 0;
}

int Show(const Config& config, const Options& o) {
  postgres::ExhaustedRepository repo(config.postgres_dsn, config.ops_schema);
  auto row = repo.Get(o.id);
  if (!row.ok()) {
    std::fprintf(stderr, "%s\n", row.error().c_str());
    return 1;
  }
  if (!row->has_value()) {
    std::fprintf(stderr, "no exhausted event with id %lld\n", static_cast<long long>(o.id));
    return 1;
  }
  std::cout << RowJson(**row, true).dump(2) << "\n";
  return 0;
}

// Body to republish: the original bytes; a history item (its row's metadata has an
// item_index) goes back with its exact bytes inside an envelope of one item.
std::string RedriveBody(const postgres::ExhaustedRow& r, const nlohmann::json& meta) {
  if (!meta.is_object() || !meta.contains("item_index")) return r.payload;
  auto route = routing::ParseSubject(r.source_subject);
  if (!route.ok() || !IsHistory(route->type) || !nlohmann::json::accept(r.payload)) {
    return r.payload;
  }
  return "{" + nlohmann::json(HistoryArrayKey(route->type)).dump() + ":[" + r.payload + "]}";
}

// The rows among `ids` that match `filter` except that they are resolved.
Result<std::vector<postgres::ExhaustedRow>, std::string> ResolvedAmong(
    postgres::ExhaustedRepository& repo, postgres::ExhaustedFilter filter,
    const std::vector<int64_t>& ids) {
  filter.ids = ids;
  filter.resolved = true;
  filter.limit = static_cast<int64_t>(ids.size());
  return repo.List(filter, false);
}

// The end of a redrive summary for ids given with --id that the filters did not select.
std::string NotSelected(int n) {
  return n > 0 ? ", " + std::to_string(n) + " --id not selected (see above)" : "";
}

int Redrive(const Config& config, const Options& o) {
  postgres::ExhaustedRepository repo(config.postgres_dsn, config.ops_schema);
  auto filter = FilterOf(o);
  if (filter.ids.empty() && !filter.company_id && filter.subject.empty() && filter.reason.empty() &&
      filter.error_class.empty() && filter.since.empty() && filter.until.empty()) {
    std::fprintf(stderr,
                 "redrive needs --id or at least one filter (use --subject '%%' for all)\n");
    return 2;
  }
  if (int rc = CheckTimes(repo, o); rc != 0) return rc;
  auto rows = repo.List(filter, true);
  if (!rows.ok()) {
    std::fprintf(stderr, "%s\n", rows.error().c_str());
    return 1;
  }
  // Ids asked for by --id that the filters did not select. One resolved already (redriven by
  // an earlier run of the same command) is skipped: running a redrive twice is harmless. Any
  // other (not found, outside the filters) is named, and the command exits 1 at the end.
  int failures = 0;
  int not_selected = 0;
  std::vector<int64_t> unselected;
  for (int64_t id : o.ids) {
    if (std::none_of(rows->begin(), rows->end(), [id](const auto& r) { return r.id == id; })) {
      unselected.push_back(id);
    }
  }
  if (!unselected.empty() && filter.resolved == std::optional<bool>(false)) {
    auto resolved = ResolvedAmong(repo, filter, unselected);
    if (!resolved.ok()) {
      std::fprintf(stderr, "%s\n", resolved.error().c_str());
      return 1;
    }
    for (const auto& r : *resolved) {
      std::string notes = r.notes;  // one note per line, oldest first
      std::replace(notes.begin(), notes.end(), '\n', ';');
      std::fprintf(stderr,
                   "id %lld: resolved already (%s), skipped; add --all to redrive it again\n",
                   static_cast<long long>(r.id), notes.c_str());
      std::erase(unselected, r.id);
    }
  }
  for (int64_t id : unselected) {
    std::fprintf(stderr, "id %lld: not found or outside the filters\n", static_cast<long long>(id));
    ++not_selected;
  }
  if (o.dry_run) {
    for (const auto& r : *rows) {
      std::printf("would redrive %lld %s (%zu bytes) %s\n", static_cast<long long>(r.id),
                  r.source_subject.c_str(), r.payload.size(), Truncate(r.reason, 80).c_str());
    }
    std::printf("%zu event(s) would be redriven%s\n", rows->size(),
                NotSelected(not_selected).c_str());
    if (static_cast<int64_t>(rows->size()) == o.filter.limit) {
      std::printf(
          "limit reached (--limit %lld): more events may match; raise --limit to see them\n",
          static_cast<long long>(o.filter.limit));
    }
    return not_selected == 0 ? 0 : 1;
  }
  auto installation = repo.InstallationId();
  if (!installation.ok()) {
    std::fprintf(stderr, "%s (run eventctl migrate)\n", installation.error().c_str());
    return 1;
  }
  auto conn = nats::NatsConnection::Connect(config, "eventctl-redrive", /*track_acks=*/true);
  if (!conn.ok()) {
    std::fprintf(stderr, "%s\n", conn.error().c_str());
    return 1;
  }
  // A progress line on a terminal only: in a file or a pipe its carriage returns would run it
  // into the lines that follow.
  const bool tty = isatty(STDERR_FILENO) != 0;
  bool progress_shown = false;
  auto end_progress_line = [&progress_shown](const char* end) {
    if (progress_shown) std::fputs(end, stderr);
    progress_shown = false;
  };
  const auto started = std::chrono::steady_clock::now();
  std::map<std::string, int64_t> sent;  // Nats-Msg-Id -> exhausted row id
  size_t n = 0;
  for (const auto& r : *rows) {
    // A fresh id per exhausted row: never deduplicated against the original, while running the
    // same redrive twice within the dedup window publishes once. Row ids repeat across
    // databases; the installation id does not.
    const std::string msg_id = "redrive:" + *installation + ":" + std::to_string(r.id);
    HeaderMap headers = {{dlq_headers::kRedriveOf, std::to_string(r.id)}};
    // The publisher's trace id follows the event (dlq_metadata.trace_id).
    auto meta = nlohmann::json::parse(r.metadata_json, nullptr, false);
    if (meta.is_object() && meta.contains("trace_id") && meta["trace_id"].is_string()) {
      headers[dlq_headers::kTraceId] = meta["trace_id"].get<std::string>();
    }
    auto p = (*conn)->PublishAsync(r.source_subject, RedriveBody(r, meta), msg_id, headers);
    if (!p.ok()) {
      end_progress_line("\n");
      std::fprintf(stderr, "id %lld: %s\n", static_cast<long long>(r.id), p.error().c_str());
      ++failures;
      continue;
    }
    sent.emplace(msg_id, r.id);
    if (++n % 1000 == 0 && tty) {
      std::fprintf(stderr, "\rredriving: %zu/%zu", n, rows->size());
      progress_shown = true;
    }
  }
  auto complete = (*conn)->PublishAsyncComplete(std::chrono::seconds(30));
  // Only publishes the stream acknowledged are resolved: the others stay unresolved for the
  // next run (a late ack is harmless: the next run's publish is a duplicate).
  // Published: stored by the stream now. Duplicates: in the stream already (a redrive of the
  // same row less than 2 minutes ago), so not published again; resolved all the same.
  std::vector<int64_t> published;
  std::vector<int64_t> duplicates;
  const auto acks = (*conn)->TakeAcknowledged();
  for (const auto& [ids, into] :
       {std::pair{&acks.stored, &published}, std::pair{&acks.duplicates, &duplicates}}) {
    for (const std::string& msg_id : *ids) {
      auto it = sent.find(msg_id);
      if (it == sent.end()) continue;
      into->push_back(it->second);
      sent.erase(it);
    }
    std::sort(into->begin(), into->end());
  }
  for (const auto& [msg_id, id] : sent) {
    end_progress_line("\n");
    std::fprintf(stderr, "id %lld: publish to its subject not acknowledged (%s)\n",
                 static_cast<long long>(id), complete.ok() ? "refused" : complete.error().c_str());
    ++failures;
  }
  const std::string note =
      "redriven by eventctl" + (o.note.empty() ? std::string() : ": " + o.note);
  // A row published again with --all gets the note although it was resolved already.
  auto resolved = repo.Resolve(published, note, /*again=*/true);
  auto resolved_duplicates = resolved.ok() ? repo.Resolve(duplicates, note) : resolved;
  if (!resolved_duplicates.ok()) {
    end_progress_line("\n");
    std::fprintf(stderr, "%s\n", resolved_duplicates.error().c_str());
    return 1;
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  end_progress_line("\r");
  std::printf("redriven %zu event(s) in %.2f s (%.0f events/s), %d failed, %zu marked resolved%s\n",
              published.size(), secs, secs > 0 ? static_cast<double>(published.size()) / secs : 0.0,
              failures, resolved->size() + resolved_duplicates->size(),
              NotSelected(not_selected).c_str());
  if (!duplicates.empty()) {
    std::printf(
        "%zu other event(s) were in the stream already (published by a redrive of the same "
        "rows less than 2 minutes ago, maybe one running now): not published again\n",
        duplicates.size());
  }
  if (static_cast<int64_t>(rows->size()) == o.filter.limit) {
    std::printf(
        "limit reached (--limit %lld): more events may match; run the same command again "
        "to continue (redriven rows are resolved and skipped), or raise --limit\n",
        static_cast<long long>(o.filter.limit));
  }
  return failures == 0 && not_selected == 0 ? 0 : 1;
}

int Resolve(const Config& config, const Options& o) {
  postgres::ExhaustedRepository repo(config.postgres_dsn, config.ops_schema);
  std::vector<int64_t> ids = o.ids;
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  auto r = repo.Resolve(ids, o.note.empty() ? std::string("resolved by eventctl") : o.note);
  if (!r.ok()) {
    std::fprintf(stderr, "%s\n", r.error().c_str());
    return 1;
  }
  std::printf("%zu event(s) marked resolved\n", r->size());
  std::vector<int64_t> unchanged;
  for (int64_t id : ids) {
    if (!std::binary_search(r->begin(), r->end(), id)) unchanged.push_back(id);
  }
  if (unchanged.empty()) return 0;
  // Resolved already: the state asked for, so not an error (running a resolve twice is
  // harmless). Not found: a mistyped id, which the operator must see.
  postgres::ExhaustedFilter any;
  auto before = ResolvedAmong(repo, any, unchanged);
  if (!before.ok()) {
    std::fprintf(stderr, "%s\n", before.error().c_str());
    return 1;
  }
  std::string already;
  for (const auto& row : *before) {
    already += (already.empty() ? "" : ", ") + std::to_string(row.id);
    std::erase(unchanged, row.id);
  }
  if (!already.empty()) {
    std::fprintf(stderr, "resolved already, left as they were: %s\n", already.c_str());
  }
  if (unchanged.empty()) return 0;
  std::string missing;
  for (int64_t id : unchanged) missing += (missing.empty() ? "" : ", ") + std::to_string(id);
  std::fprintf(stderr, "not found: %s (see `exhausted list --all`)\n", missing.c_str());
  return 1;
}

// Checked before CLI11 converts the text, which turns "" into 0 and clamps what overflows.
CLI::Validator RowId() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        int64_t id = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), id);
        if (text.empty() || ec != std::errc() || end != text.data() + text.size() || id < 1) {
          return "'" + text + "' is not an exhausted event id (a positive integer)";
        }
        return "";
      },
      "ID");
}

void AddFilters(CLI::App* cmd, Options& o) {
  // Given empty, it selects the rows of subjects without a tenant (see docs/operations.md).
  cmd->add_option_function<std::string>(
      "--tenant", [&o](const std::string& tenant) { o.filter.company_id = tenant; },
      "company_id (exact; '' = rows without one)");
  cmd->add_option("--subject", o.filter.subject,
                  "source subject; '%' matches any characters (e.g. 'v1.chats.%')");
  std::vector<std::string> codes;
  codes.reserve(std::size(kAllReasonCodes));
  for (ReasonCode code : kAllReasonCodes) codes.emplace_back(ReasonCodeName(code));
  // A misspelt code would match nothing and read as "nothing failed".
  cmd->add_option("--reason", o.filter.reason, "reason code, e.g. schema_violation")
      ->check(CLI::IsMember(codes));
  cmd->add_option("--class", o.filter.error_class, "fatal or retryable")
      ->check(CLI::IsMember({"fatal", "retryable"}));
  cmd->add_option("--since", o.filter.since, "last failure at or after (e.g. '2026-11-25 10:00Z')");
  cmd->add_option("--until", o.filter.until, "last failure before");
  cmd->add_flag("--all", o.all, "include resolved events");
  cmd->add_flag("--resolved", o.only_resolved, "only resolved events");
  cmd->add_option("--limit", o.filter.limit, "at most this many rows")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{10'000'000}));
}

}  // namespace

std::function<int(const Config&)> AddExhaustedCommands(CLI::App& app) {
  auto o = std::make_shared<Options>();
  o->filter.limit = 1000;  // before the options capture it as their shown default
  auto* ex = app.add_subcommand("exhausted", "list, show, redrive and resolve exhausted events");
  ex->require_subcommand(1);
  auto* list = ex->add_subcommand("list", "list exhausted events (unresolved by default)");
  AddFilters(list, *o);
  list->add_flag("--json", o->json, "one JSON object per line");
  list->add_flag("--newest", o->filter.newest_first,
                 "newest first (with --limit: the latest failures)");
  auto* show = ex->add_subcommand("show", "show one exhausted event with its payload");
  show->add_option("id", o->id, "exhausted event id")->required()->check(RowId());
  auto* redrive = ex->add_subcommand(
      "redrive", "republish the original bytes to the source subject and mark them resolved");
  redrive->add_option("--id", o->ids, "exhausted event id (repeatable)")->check(RowId());
  AddFilters(redrive, *o);
  redrive->add_flag("--dry-run", o->dry_run, "print what would be redriven");
  redrive->add_option("--note", o->note, "note appended to the resolved rows");
  auto* resolve = ex->add_subcommand("resolve", "mark exhausted events resolved without redriving");
  resolve->add_option("id", o->ids, "exhausted event id(s)")->required()->check(RowId());
  resolve->add_option("--note", o->note, "why it is resolved [resolved by eventctl]");

  return [o, list, show, redrive, resolve](const Config& config) -> int {
    if (config.postgres_dsn.empty()) {
      std::fprintf(stderr, "POSTGRES_DSN is required\n");
      return 2;
    }
    if (*list) return List(config, *o);
    if (*show) return Show(config, *o);
    if (*redrive) return Redrive(config, *o);
    if (*resolve) return Resolve(config, *o);
    return 2;
  };
}

}  // namespace evp::eventctl
