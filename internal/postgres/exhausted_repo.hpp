#pragma once
// Operator queries over <OPS_SCHEMA>.exhausted_events: list with filters, show one, mark
// resolved. Values always go as parameters. One repository per thread.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/result.hpp"

namespace evp::postgres {

struct ExhaustedFilter {
  std::vector<int64_t> ids;               // when set, only these rows (other filters still apply)
  std::optional<std::string> company_id;  // exact; "" selects the rows without a tenant
  std::string subject;      // pattern on source_subject: '%' is a wildcard, '_' is literal
  std::string reason;       // reason code, e.g. schema_violation
  std::string error_class;  // fatal | retryable
  std::string since;        // timestamptz text, on last_failed_at
  std::string until;
  std::optional<bool> resolved = false;  // nullopt = both
  int64_t limit = 100;
  bool newest_first = false;  // else oldest first
};

struct ExhaustedRow {
  int64_t id = 0;
  std::string company_id;
  std::string source_subject;
  std::string error_class;
  std::string reason;
  int64_t attempts = 0;
  std::string first_failed_at;
  std::string last_failed_at;
  bool resolved = false;
  std::string resolved_at;
  std::string notes;
  std::string metadata_json;
  std::string payload;  // exact original bytes
};

class ExhaustedRepository {
 public:
  ExhaustedRepository(std::string dsn, std::string ops_schema);
  ~ExhaustedRepository();

  // Rows matching the filter, oldest first; payloads included when with_payload.
  Result<std::vector<ExhaustedRow>, std::string> List(const ExhaustedFilter& filter,
                                                      bool with_payload);
  Result<std::optional<ExhaustedRow>, std::string> Get(int64_t id);
  // Whether PostgreSQL reads `text` as a time (timestamptz, as the filters do): an empty
  // string when it does, else PostgreSQL's reason. Err when the database cannot be asked.
  Result<std::string, std::string> TimeError(const std::string& text);
  // Marks rows resolved with a note appended; returns the ids that changed, ascending. With
  // `again`, rows resolved already are changed too (their resolved_at renewed, the note
  // appended): an event redriven once more leaves a trace on its row.
  Result<std::vector<int64_t>, std::string> Resolve(const std::vector<int64_t>& ids,
                                                    const std::string& note, bool again = false);
  // The random id of this ops schema's installation (unique across databases).
  Result<std::string, std::string> InstallationId();

 private:
  struct Connection;
  std::string dsn_;
  std::string ops_schema_;
  std::unique_ptr<Connection> conn_;
};

}  // namespace evp::postgres
