// Logging setup (spdlog). Never pass key material to a log call: log public keys, fingerprints or sizes.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace dstack {

// level: trace|debug|info|warn|error; also honours env RUST_LOG / DSTACK_LOG (the seed sets RUST_LOG=info).
void init_logging(const std::string& name, const std::string& level = "info");

}  // namespace dstack
