#include "base/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>

namespace dstack {

void init_logging(const std::string& name, const std::string& level) {
  std::string lvl = level;
  if (const char* env = std::getenv("DSTACK_LOG")) lvl = env;
  else if (const char* rust = std::getenv("RUST_LOG")) lvl = rust;
  auto logger = spdlog::stderr_color_mt(name);
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ %n: %v", spdlog::pattern_time_type::utc);
  spdlog::set_level(spdlog::level::from_str(lvl));
  spdlog::flush_on(spdlog::level::info);
}

}  // namespace dstack
