// dstack-guest-agent: the in-CVM API on dstack.sock / tappd.sock / TCP 8090 (spec §7).
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <pthread.h>
#include <csignal>
#include <cstdlib>

#include "base/fs.h"
#include "base/log.h"
#include "guest/config.h"
#include "guest/server.h"
#include "guest/service.h"


int main(int argc, char** argv) {
  CLI::App app{"dstack guest agent: quotes, keys and the RTMR3 event log for apps in a CVM"};
  std::string config_path;
  app.add_option("-c,--config", config_path, "dstack.toml (see apps/dstack-guest-agent/README.md)");
  CLI11_PARSE(app, argc, argv);
  dstack::init_logging("dstack-guest-agent");

  dstack::Result<dstack::guest::AgentConfig> cfg = dstack::guest::AgentConfig{};
  if (!config_path.empty()) {
    cfg = dstack::guest::AgentConfig::load(config_path);
  } else {
    for (const char* p : {"/etc/dstack/dstack.toml", "./dstack.toml"}) {
      if (dstack::file_exists(p)) {
        cfg = dstack::guest::AgentConfig::load(p);
        break;
      }
    }
  }
  if (!cfg.ok()) {
    spdlog::error("{}", cfg.error().message);
    return 2;
  }
  auto svc = dstack::guest::GuestService::create(*cfg);
  if (!svc.ok()) {
    spdlog::error("cannot start: {}", svc.error().message);
    return 1;
  }
  // Signals are handled synchronously in main (sigwait) so stop() never runs inside a signal handler.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  dstack::guest::AgentServer server(**svc);
  auto st = server.start();
  if (!st.ok()) {
    spdlog::error("{}", st.error().message);
    return 1;
  }
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("signal {} received, stopping", sig);
  server.stop();
  spdlog::info("dstack-guest-agent stopped");
  return 0;
}
