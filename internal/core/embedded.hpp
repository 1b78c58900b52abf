#pragma once
// Files compiled into the binaries (JSON Schemas, SQL migrations): a deployed binary needs no
// files from the source tree. Paths are relative to the folder they were embedded from.
#include <span>
#include <string_view>

namespace evp {

struct EmbeddedFile {
  std::string_view path;     // e.g. "v1/chats.upsert.json" or "tenant/0001_init.sql"
  std::string_view content;  // exact file bytes
};

std::span<const EmbeddedFile> EmbeddedSchemas();
std::span<const EmbeddedFile> EmbeddedMigrations();

}  // namespace evp
