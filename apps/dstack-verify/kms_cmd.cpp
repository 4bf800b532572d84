// `dstack-verify kms`: remote check of a deployed KMS (see src/verify/kms_check.h for what is checked and why
// the TLS connection itself is not CA-verified).
#include <iostream>
#include <memory>

#include "attest/collateral.h"
#include "base/fs.h"
#include "commands.h"
#include "verify/kms_check.h"

namespace dstack::verify_cli {
namespace {

struct KmsArgs {
  std::string url;
  std::string meta_file;
  std::string root_ca_file;
  std::string collateral_file;
  std::string sim_platform_dir;
  bool allow_sim_root = false;
  int64_t max_ms = 1000;
  int64_t timeout_ms = 10000;
  int64_t time = 0;
  bool json = false;
};

int usage_error(const KmsArgs& a, const std::string& msg) {
  if (a.json) std::cout << nlohmann::json{{"ok", false}, {"verdict", "FAIL"}, {"error", msg}}.dump() << "\n";
  std::cerr << "dstack-verify kms: " << msg << "\n";
  return 2;
}

int run_kms(const KmsArgs& a) {
  if (a.url.empty() == a.meta_file.empty()) return usage_error(a, "give exactly one of --url or --meta-file");
  verify::KmsCheckOptions o;
  o.url = a.url;
  o.max_response_ms = a.max_ms;
  o.timeout = std::chrono::milliseconds(a.timeout_ms);
  o.now_unix = a.time;
  o.sim_platform_dir = a.sim_platform_dir;
  o.allow_sim_root = a.allow_sim_root;
  if (!a.sim_platform_dir.empty() && (!a.collateral_file.empty() || !a.root_ca_file.empty()))
    return usage_error(a, "--sim-platform cannot be combined with --collateral/--root-ca");
  if (!a.root_ca_file.empty() && a.collateral_file.empty())
    return usage_error(a, "--root-ca needs --collateral (the collateral signed under that root)");
  if (!a.collateral_file.empty()) {
    auto text = read_file(a.collateral_file);
    if (!text.ok()) return usage_error(a, text.error().message);
    auto coll = attest::parse_collateral_json(*text);
    if (!coll.ok()) return usage_error(a, coll.error().wrap(a.collateral_file).message);
    o.collateral = *coll;
  }
  if (!a.root_ca_file.empty()) {
    auto pem = read_file(a.root_ca_file);
    if (!pem.ok()) return usage_error(a, pem.error().message);
    o.trust.trust_intel_root = false;  // an explicit root replaces Intel's: the caller opted in
    o.trust.extra_root_pems.push_back(*pem);
  }
  verify::KmsReport rep;
  if (!a.meta_file.empty()) {
    auto text = read_file(a.meta_file);
    if (!text.ok()) return usage_error(a, text.error().message);
    auto meta = nlohmann::json::parse(*text, nullptr, false);
    if (meta.is_discarded()) return usage_error(a, a.meta_file + " is not JSON (expected a saved GetMeta response)");
    rep.get_meta = meta;
    verify::check_meta(meta, {}, o, rep);
  } else {
    rep = verify::check_kms(o);
  }
  if (a.json) std::cout << verify::report_to_json(rep).dump() << "\n";
  else std::cout << verify::report_to_text(rep);
  return rep.ok ? 0 : 1;
}

}  // namespace

Runner add_kms_command(CLI::App& app) {
  auto a = std::make_shared<KmsArgs>();
  app.add_option("--url", a->url, "KMS RPC base URL, e.g. https://127.0.0.1:9100");
  app.add_option("--meta-file", a->meta_file, "Check a saved GetMeta JSON (backup) instead of a live KMS");
  app.add_option("--root-ca", a->root_ca_file, "Trust this root CA (PEM) INSTEAD of Intel's (needs --collateral)");
  app.add_option("--collateral", a->collateral_file, "DCAP collateral JSON for the quote (dcap-qvl shape)");
  app.add_option("--sim-platform", a->sim_platform_dir,
                 "Simulated TDX platform dir (dstack-tdx-sim): its root CA + generated collateral");
  app.add_flag("--allow-sim-root", a->allow_sim_root, "Explicitly accept quotes signed under a SIMULATED root");
  app.add_option("--max-ms", a->max_ms, "GetMeta must answer within this many ms (default 1000)");
  app.add_option("--timeout-ms", a->timeout_ms, "Network timeout per request (default 10000)");
  app.add_option("--time", a->time, "Quote verification time, unix seconds (default: now)");
  app.add_flag("--json", a->json, "Print one line of JSON");
  return [a] { return run_kms(*a); };
}

}  // namespace dstack::verify_cli
