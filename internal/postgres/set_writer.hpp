#pragma once
// Set-based writes: all mutations of one batch in a few statements per (tenant, table, kind),
// each statement taking its rows as one jsonb array (jsonb_to_recordset), with the same
// version guard as the row-at-a-time path. Several events for one key in a batch are written
// in rounds (the k-th event of every key in round k, in fetch order), because ON CONFLICT
// cannot touch a row twice in one statement; the result equals applying them one by one.
// Throws pqxx exceptions; the caller classifies them. Not thread-safe (one per connection).
#include <map>
#include <span>
#include <string>
#include <vector>

#include "handlers/mutation.hpp"
#include "pipeline/ports.hpp"

namespace pqxx {
class dbtransaction;
}  // namespace pqxx

namespace evp::postgres {

class SetWriter {
 public:
  explicit SetWriter(std::string tenant_prefix) : tenant_prefix_(std::move(tenant_prefix)) {}

  // Writes every mutation inside tx; results[i] belongs to mutations[i].
  std::vector<pipeline::ApplyResult> Write(pqxx::dbtransaction& tx,
                                           std::span<const handlers::Mutation> mutations);
  // Prepared statements belong to a connection: forget them when it is replaced.
  void ConnectionReset() { prepared_.clear(); }

 private:
  const std::string& Prepare(pqxx::dbtransaction& tx, const std::string& schema,
                             const handlers::TableDef& def, char op);
  void WriteGroup(pqxx::dbtransaction& tx, std::span<const handlers::Mutation> all,
                  const std::vector<size_t>& indices, std::vector<pipeline::ApplyResult>& out);

  std::string tenant_prefix_;
  std::map<std::string, std::string> prepared_;  // (schema, table, op) -> statement name
};

}  // namespace evp::postgres
