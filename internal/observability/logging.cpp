#include "observability/logging.hpp"

#include <spdlog/sinks/stdout_sinks.h>

#include <atomic>
#include <nlohmann/json.hpp>

namespace evp::observability {
namespace {

std::atomic<bool> g_json{true};
std::string g_binary = "evp";

// libpq's messages end with a newline, which would break a text log line in two.
std::string_view TrimEnd(std::string_view value) {
  while (!value.empty() && (value.back() == '\n' || value.back() == '\r' || value.back() == ' ')) {
    value.remove_suffix(1);
  }
  return value;
}

}  // namespace

void InitLogging(std::string_view binary, std::string_view level, std::string_view format) {
  g_binary = std::string(binary);
  g_json = format != "text";
  auto logger = spdlog::stderr_logger_mt(std::string(binary) + "-log");
  if (g_json) {
    // The JSON object is built by Log(); spdlog only adds the time and level in front.
    logger->set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l",%v})",
                        spdlog::pattern_time_type::utc);
  } else {
    logger->set_pattern("%H:%M:%S.%e %^%-5l%$ [%n] %v");
  }
  logger->set_level(spdlog::level::from_str(std::string(level)));
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

void Log(spdlog::level::level_enum level, std::string_view msg,
         std::initializer_list<Field> fields) {
  if (!spdlog::default_logger_raw()->should_log(level)) return;
  if (g_json) {
    // Build `"msg":...,"k":"v"` with proper escaping (values may hold any bytes).
    nlohmann::ordered_json obj;
    obj["msg"] = std::string(msg);
    obj["service"] = g_binary;
    for (const Field& f : fields) {
      if (!f.value.empty()) obj[std::string(f.key)] = TrimEnd(f.value);
    }
    std::string body = obj.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    // Strip the braces: the pattern supplies them around ts and level.
    spdlog::default_logger_raw()->log(level, "{}",
                                      std::string_view(body).substr(1, body.size() - 2));
  } else {
    std::string line(msg);
    for (const Field& f : fields) {
      if (f.value.empty()) continue;
      line += " ";
      line += f.key;
      line += "=";
      line += TrimEnd(f.value);
    }
    spdlog::default_logger_raw()->log(level, "{}", line);
  }
}

}  // namespace evp::observability
