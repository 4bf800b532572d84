// dstack-vmm: the VM manager daemon (spec §10). Usage: dstack-vmm [-c vmm.toml]
//             dstack-vmm doctor [--json] [--qemu PATH] [--bios F]... [--image-dir D]...   (TDX host readiness)
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstring>
#include <iostream>
#include <pthread.h>

#include "base/log.h"
#include "rpc/http.h"
#include "vmm/backend.h"
#include "vmm/config.h"
#include "vmm/qemu/doctor.h"
#include "vmm/server.h"
#include "vmm/vmm.h"

int main(int argc, char** argv) {
  // `dstack-vmm doctor ...` = dstack-vmm-doctor: can this host run TDX guests with the QEMU backend?
  if (argc >= 2 && std::strcmp(argv[1], "doctor") == 0) return dstack::vmm::qemu::doctor_main(argc - 2, argv + 2);
  CLI::App app{"dstack-vmm: dstack VM manager (JSON pRPC API, web UI, CVM supervision).\n"
               "Subcommand: `dstack-vmm doctor [--json] [--qemu PATH] [--bios FILE]... [--image-dir DIR]...` "
               "reports whether this host can run TDX guests (same as dstack-vmm-doctor)"};
  std::string config_file;
  app.add_option("-c,--config", config_file, "vmm.toml (defaults, /etc/vmm/vmm.toml and ./vmm.toml are read first)");
  CLI11_PARSE(app, argc, argv);

  // Signals are handled by a dedicated thread: block them before any thread starts.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  auto cfg = dstack::vmm::load_config(config_file);
  if (!cfg) {
    std::cerr << "dstack-vmm: " << cfg.error().message << "\n";
    return 2;
  }
  dstack::init_logging("dstack-vmm", cfg->log_level);
  auto backend = dstack::vmm::make_backend(*cfg);
  if (!backend) {
    spdlog::error("{}", backend.error().message);
    return 2;
  }
  if (auto s = (*backend)->check(); !s) spdlog::warn("{} (VMs cannot start until this is fixed)", s.error().message);

  dstack::vmm::VmManager vmm(*cfg, std::move(*backend));
  dstack::rpc::ServerOptions opts;
  opts.threads = cfg->workers;
  opts.server_header = "dstack-vmm";
  opts.extra_headers = {{"X-App-Version", dstack::vmm::kVmmVersion}};
  dstack::rpc::HttpServer server(opts);
  auto routes = dstack::vmm::register_routes(server, vmm);
  std::string addr = dstack::vmm::listen_address(*cfg);
  if (auto s = server.listen(addr); !s) {
    spdlog::error("cannot listen on {}: {}", addr, s.error().message);
    return 1;
  }
  if (auto s = vmm.load(); !s) {
    spdlog::error("loading VMs from {}: {}", cfg->run_path, s.error().message);
    return 1;
  }
  server.start();
  uint16_t port = addr.rfind("unix:", 0) == 0 ? 0 : server.bound_port(0);
  spdlog::info("dstack-vmm {} listening on {}{} (run_path {}, images {}, backend {})", dstack::vmm::kVmmVersion,
               addr, port ? " port " + std::to_string(port) : "", cfg->run_path, cfg->image.path, cfg->cvm.backend);

  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("signal {}: stopping VMs (they restart with the next dstack-vmm) and exiting", sig);
  vmm.shutdown();
  server.stop();
  return 0;
}
