// dstack-auth-eth: on-chain auth webhook for dstack-kms (spec §6.3) + operator tools for the contracts.
//   dstack-auth-eth [serve] [-c config]          env ETH_RPC_URL, KMS_CONTRACT_ADDR, HOST, PORT
//   dstack-auth-eth deploy --compose-hash H ...  deploy DstackKms (+ a DstackApp) and print addresses as JSON
//   dstack-auth-eth <admin-action> ...           e.g. allow-compose-hash --app A --value H
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include "base/log.h"
#include "ethauth/auth_service.h"
#include "ethauth/deploy.h"
#include "rpc/http.h"

using namespace dstack;
using namespace dstack::ethauth;

namespace {

rpc::HttpServer* g_server = nullptr;
void on_signal(int) {
  if (g_server) g_server->stop();
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return (v && *v) ? v : fallback;
}

std::string default_contracts_dir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    auto d = exe.parent_path().parent_path() / "contracts";  // <build>/bin/.. /contracts
    if (std::filesystem::exists(d / "DstackKms.json")) return d.string();
  }
  return "build/contracts";
}

int fail(const std::string& msg) {
  std::cerr << "error: " << msg << "\n";
  return 1;
}

int run_serve(const std::string& config_path) {
  AuthEthConfig cfg;
  if (!config_path.empty()) {
    if (auto st = load_config_file(config_path, cfg); !st.ok()) return fail(st.error().message);
  }
  if (auto st = apply_env(cfg); !st.ok()) return fail(st.error().message);
  auto svc = AuthEthService::create(cfg);
  if (!svc.ok()) return fail(svc.error().message);
  rpc::ServerOptions so;
  so.threads = cfg.server_threads;
  so.server_header = "dstack-auth-eth";
  // GET / is served from the cache and never blocks: answer it on the I/O thread (stays fast under load).
  so.run_inline = [](const rpc::HttpRequest& r) { return r.method == "GET" && r.path == "/"; };
  rpc::HttpServer server(so);
  (*svc)->register_routes(server);
  if (auto st = server.listen(cfg.host + ":" + std::to_string(cfg.port)); !st.ok())
    return fail("listening on " + cfg.host + ":" + std::to_string(cfg.port) + ": " + st.error().message);
  (*svc)->start_refresher();
  g_server = &server;
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  spdlog::info("dstack-auth-eth listening on {}:{} (kms contract {}, rpc {}, budget {} ms)", cfg.host,
               server.bound_port(), cfg.kms_contract_addr, redact_url(cfg.eth_rpc_url), cfg.budget.count());
  server.start();
  server.wait();
  g_server = nullptr;
  (*svc)->stop_refresher();
  return 0;
}

struct AdminAction {
  const char* name;
  const char* help;
  bool on_app;            // target is a DstackApp (--app) rather than DstackKms (--kms)
  const char* signature;  // single argument
  char arg;               // 'h' bytes32, 'a' address, 's' string, 'b' bool
};

const AdminAction kActions[] = {
    {"register-app", "register an app contract address in DstackKms", false, "registerApp(address)", 'a'},
    {"allow-os-image", "addOsImageHash", false, "addOsImageHash(bytes32)", 'h'},
    {"remove-os-image", "removeOsImageHash", false, "removeOsImageHash(bytes32)", 'h'},
    {"allow-kms-mr", "addKmsAggregatedMr", false, "addKmsAggregatedMr(bytes32)", 'h'},
    {"remove-kms-mr", "removeKmsAggregatedMr", false, "removeKmsAggregatedMr(bytes32)", 'h'},
    {"allow-kms-device", "addKmsDevice", false, "addKmsDevice(bytes32)", 'h'},
    {"remove-kms-device", "removeKmsDevice", false, "removeKmsDevice(bytes32)", 'h'},
    {"set-gateway-app-id", "setGatewayAppId", false, "setGatewayAppId(string)", 's'},
    {"set-app-implementation", "setAppImplementation", false, "setAppImplementation(address)", 'a'},
    {"allow-compose-hash", "DstackApp.addComposeHash", true, "addComposeHash(bytes32)", 'h'},
    {"remove-compose-hash", "DstackApp.removeComposeHash", true, "removeComposeHash(bytes32)", 'h'},
    {"allow-app-device", "DstackApp.addDevice", true, "addDevice(bytes32)", 'h'},
    {"remove-app-device", "DstackApp.removeDevice", true, "removeDevice(bytes32)", 'h'},
    {"set-allow-any-device", "DstackApp.setAllowAnyDevice (true|false)", true, "setAllowAnyDevice(bool)", 'b'},
    {"set-require-tcb-up-to-date", "DstackApp.setRequireTcbUpToDate (true|false)", true,
     "setRequireTcbUpToDate(bool)", 'b'},
};

Result<abi::Value> parse_arg(char kind, const std::string& v) {
  switch (kind) {
    case 'h': {
      TRY_ASSIGN(Bytes b, parse_bytes32(v));
      return abi::Value::fixed_bytes(std::move(b));
    }
    case 'a': {
      TRY_ASSIGN(Bytes b, parse_address(v));
      return abi::Value::address(std::move(b));
    }
    case 'b':
      if (v == "true" || v == "1") return abi::Value::boolean_(true);
      if (v == "false" || v == "0") return abi::Value::boolean_(false);
      return make_error("'" + v + "' is not true/false");
    default: return abi::Value::string_(v);
  }
}

}  // namespace

int main(int argc, char** argv) {
  init_logging("dstack-auth-eth");
  CLI::App app{"dstack-auth-eth: Ethereum-backed auth webhook for dstack-kms"};
  app.require_subcommand(0, 1);
  std::string config_path;
  app.add_option("-c,--config", config_path, "config file (TOML, or JSON if *.json) for serve");

  auto* serve = app.add_subcommand("serve", "serve the webhook (default)");
  serve->add_option("-c,--config", config_path, "config file (TOML, or JSON if *.json)");

  std::string rpc_url = env_or("ETH_RPC_URL", "http://localhost:8545");
  std::string from;
  std::string contracts_dir;
  DeployOptions dopts;
  std::string compose_hash, app_device, gateway_app_id;
  std::vector<std::string> os_images, kms_mrs, kms_devices;
  auto* deploy = app.add_subcommand("deploy", "deploy DstackKms (+ a DstackApp) and print the addresses as JSON");
  deploy->add_option("--rpc-url", rpc_url, "Ethereum JSON-RPC URL (env ETH_RPC_URL)");
  deploy->add_option("--from", from, "sender account (default: first eth_accounts entry)");
  deploy->add_option("--contracts-dir", contracts_dir, "compiled artifacts from contracts/build.js");
  deploy->add_option("--compose-hash", compose_hash, "deploy + register a DstackApp allowing this compose hash");
  deploy->add_option("--app-device", app_device, "device id allowed for the app");
  deploy->add_flag("--app-allow-any-device", dopts.app_allow_any_device, "app may boot on any device");
  deploy->add_flag("--app-require-tcb-up-to-date", dopts.app_require_tcb_up_to_date, "app requires UpToDate TCB");
  deploy->add_option("--os-image", os_images, "allowed OS image hash (repeatable)");
  deploy->add_option("--kms-mr", kms_mrs, "allowed KMS aggregated MR (repeatable)");
  deploy->add_option("--kms-device", kms_devices, "allowed KMS device id (repeatable)");
  deploy->add_option("--gateway-app-id", gateway_app_id, "gateway app id to record");

  std::string kms_addr = env_or("KMS_CONTRACT_ADDR", "");
  std::string app_addr, value;
  std::vector<std::pair<CLI::App*, const AdminAction*>> actions;
  for (const auto& a : kActions) {
    auto* sc = app.add_subcommand(a.name, a.help);
    sc->add_option("--rpc-url", rpc_url, "Ethereum JSON-RPC URL (env ETH_RPC_URL)");
    sc->add_option("--from", from, "sender account (default: first eth_accounts entry)");
    if (a.on_app) sc->add_option("--app", app_addr, "DstackApp contract address (= app id)")->required();
    else sc->add_option("--kms", kms_addr, "DstackKms contract address (env KMS_CONTRACT_ADDR)");
    sc->add_option("value", value, "the argument")->required();
    actions.emplace_back(sc, &a);
  }
  CLI11_PARSE(app, argc, argv);

  if (deploy->parsed()) {
    EthRpc rpc(rpc_url);
    dopts.contracts_dir = contracts_dir.empty() ? default_contracts_dir() : contracts_dir;
    dopts.from = from;
    dopts.gateway_app_id = gateway_app_id;
    auto b32 = [](const std::string& s, const char* what) -> Result<Bytes> {
      auto r = parse_bytes32(s);
      if (!r.ok()) return r.error().wrap(what);
      return r;
    };
    if (!compose_hash.empty()) {
      auto r = b32(compose_hash, "--compose-hash");
      if (!r.ok()) return fail(r.error().message);
      dopts.compose_hash = *r;
    }
    if (!app_device.empty()) {
      auto r = b32(app_device, "--app-device");
      if (!r.ok()) return fail(r.error().message);
      dopts.app_device_id = *r;
    }
    for (auto [list, out, what] : {std::tuple{&os_images, &dopts.os_image_hashes, "--os-image"},
                                   std::tuple{&kms_mrs, &dopts.kms_aggregated_mrs, "--kms-mr"},
                                   std::tuple{&kms_devices, &dopts.kms_device_ids, "--kms-device"}}) {
      for (const auto& s : *list) {
        auto r = b32(s, what);
        if (!r.ok()) return fail(r.error().message);
        out->push_back(*r);
      }
    }
    auto res = deploy_all(rpc, dopts);
    if (!res.ok()) return fail(res.error().message);
    std::cout << res->to_json().dump(2) << std::endl;
    return 0;
  }
  for (auto [sc, a] : actions) {
    if (!sc->parsed()) continue;
    EthRpc rpc(rpc_url);
    std::string target = a->on_app ? app_addr : kms_addr;
    if (target.empty()) return fail("no contract address: pass --kms or set KMS_CONTRACT_ADDR");
    auto to = parse_address(target);
    if (!to.ok()) return fail("contract address: " + to.error().message);
    auto arg = parse_arg(a->arg, value);
    if (!arg.ok()) return fail(arg.error().message);
    std::string sender = from;
    if (sender.empty()) {
      auto s = default_sender(rpc);
      if (!s.ok()) return fail(s.error().message);
      sender = *s;
    }
    auto r = send_call(rpc, sender, to_0x(*to), a->signature, {*arg});
    if (!r.ok()) return fail(r.error().message);
    std::cout << nlohmann::json{{"ok", true}, {"action", a->name}, {"transactionHash", (*r).value("transactionHash", "")}}.dump()
              << std::endl;
    return 0;
  }
  return run_serve(config_path);
}
