// dstack-kms: key management service (see src/kms/bootstrap.h run_kms).
#include <CLI/CLI.hpp>

#include <csignal>

#include "base/log.h"
#include "kms/bootstrap.h"

static std::atomic<bool> g_stop{false};

int main(int argc, char** argv) {
  CLI::App app{"dstack KMS: root keys in a TEE, keys for attested apps"};
  std::string config;
  app.add_option("-c,--config", config, "kms.toml");
  CLI11_PARSE(app, argc, argv);
  dstack::init_logging("dstack-kms");
  std::signal(SIGINT, [](int) { g_stop = true; });
  std::signal(SIGTERM, [](int) { g_stop = true; });
  std::signal(SIGPIPE, SIG_IGN);
  auto cfg = dstack::kms::load_config(config.empty() ? std::nullopt : std::optional<std::string>(config));
  if (!cfg.ok()) {
    spdlog::error("{}", cfg.error().message);
    return 2;
  }
  dstack::kms::RunHooks hooks;
  hooks.stop = &g_stop;
  return dstack::kms::run_kms(*cfg, hooks);
}
