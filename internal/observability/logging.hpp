#pragma once
// Structured logs through spdlog: one JSON object per line (LOG_FORMAT=json) or a readable
// line for local runs (text). Fields: ts, level, msg, then the given fields (company_id,
// subject, stream_seq, delivered, event_id, trace_id, ...); a field with an empty value is left
// out ("where present"). Never pass payload bodies at info level.
// Thread-safe.
#include <spdlog/spdlog.h>

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace evp::observability {

struct Field {
  std::string_view key;
  std::string value;
  Field(std::string_view k, std::string v) : key(k), value(std::move(v)) {}
  Field(std::string_view k, std::string_view v) : key(k), value(v) {}
  Field(std::string_view k, const char* v) : key(k), value(v) {}
  template <typename N>
  requires std::is_arithmetic_v<N> Field(std::string_view k, N n)
      : key(k), value(std::to_string(n)) {}
};

// Configures the default logger: binary name, LOG_LEVEL and LOG_FORMAT values.
void InitLogging(std::string_view binary, std::string_view level, std::string_view format);

void Log(spdlog::level::level_enum level, std::string_view msg,
         std::initializer_list<Field> fields = {});

inline void LogInfo(std::string_view msg, std::initializer_list<Field> fields = {}) {
  Log(spdlog::level::info, msg, fields);
}
inline void LogWarn(std::string_view msg, std::initializer_list<Field> fields = {}) {
  Log(spdlog::level::warn, msg, fields);
}
inline void LogError(std::string_view msg, std::initializer_list<Field> fields = {}) {
  Log(spdlog::level::err, msg, fields);
}
inline void LogDebug(std::string_view msg, std::initializer_list<Field> fields = {}) {
  Log(spdlog::level::debug, msg, fields);
}

}  // namespace evp::observability
