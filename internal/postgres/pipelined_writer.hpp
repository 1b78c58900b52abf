#pragma once
// Writes a batch's statements (SetWriter::Plan) in libpq pipeline mode on a connection of
// its own: BEGIN and every write in one round trip, then the stale checks that are needed
// (updates that did not apply) with COMMIT in a second one. The sequential SetWriter::Write stays
// the reference and the fallback: when a statement fails here, nothing is committed and the caller
// isolates the failing events. Not thread-safe (one per writer connection).
#include <set>
#include <span>
#include <string>
#include <vector>

#include "handlers/mutation.hpp"
#include "pipeline/ports.hpp"
#include "postgres/set_writer.hpp"

struct pg_conn;

namespace evp::postgres {

class PipelinedWriter {
 public:
  PipelinedWriter(std::string dsn, std::string tenant_prefix);
  ~PipelinedWriter();
  PipelinedWriter(const PipelinedWriter&) = delete;
  PipelinedWriter& operator=(const PipelinedWriter&) = delete;

  enum class Failure { kNone, kStatement, kConnection };
  struct Outcome {
    Failure failure = Failure::kNone;
    std::string message;  // the database's error for a failure
    std::vector<pipeline::ApplyResult> results;
  };
  // Commits all mutations in one transaction, or nothing (failure set).
  Outcome Write(std::span<const handlers::Mutation> mutations);

 private:
  bool Connect(std::string& error);
  // One round trip in pipeline mode: BEGIN (when `begin`), the steps, COMMIT (when
  // `commit`), a sync point; interprets the steps' rows into outcome.results and records the
  // first failing statement in outcome. False when the connection is lost.
  bool Exchange(const std::vector<const WriteStep*>& steps, bool begin, bool commit,
                Outcome& outcome);
  void Close();

  std::string dsn_;
  SetWriter planner_;
  pg_conn* conn_ = nullptr;
  std::set<std::string> prepared_;
};

}  // namespace evp::postgres
