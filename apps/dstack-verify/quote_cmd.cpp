#include <ctime>
#include <iostream>
#include <memory>

#include "attest/collateral.h"
#include "attest/dcap_json.h"
#include "attest/quote.h"
#include "attest/verify.h"
#include "base/fs.h"
#include "commands.h"

namespace dstack::verify_cli {
namespace {

struct QuoteArgs {
  std::string quote_file;
  bool hex = false;
  std::string collateral_file;
  int64_t time = 0;
  std::string root_ca_file;
  bool json = false;
};

Result<Bytes> read_quote(const QuoteArgs& a) {
  if (!a.hex) return read_file_bytes(a.quote_file);
  TRY_ASSIGN(std::string text, read_file(a.quote_file));
  std::string clean;
  for (char c : text)
    if (!std::isspace(static_cast<unsigned char>(c))) clean.push_back(c);
  auto b = from_hex(clean);
  if (!b.ok()) return b.error().wrap("--hex: " + a.quote_file + " is not a hex-encoded quote");
  return b;
}

void print_fields(const nlohmann::ordered_json& j, bool as_json) {
  if (as_json) {
    std::cout << j.dump() << "\n";
    return;
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    const auto& v = it.value();
    std::cout << it.key() << ": ";
    if (v.is_string()) {
      std::cout << v.get<std::string>();
    } else if (v.is_array()) {
      std::string s;
      for (const auto& e : v) s += (s.empty() ? "" : ", ") + (e.is_string() ? e.get<std::string>() : e.dump());
      std::cout << (s.empty() ? "(none)" : s);
    } else {
      std::cout << v.dump();
    }
    std::cout << "\n";
  }
}

int fail(const QuoteArgs& a, const std::string& reason) {
  if (a.json) {
    nlohmann::ordered_json j;
    j["verified"] = false;
    j["error"] = reason;
    std::cout << j.dump() << "\n";
  }
  std::cerr << "dstack-verify: " << reason << "\n";
  return 1;
}

int run_quote(const QuoteArgs& a) {
  auto raw = read_quote(a);
  if (!raw.ok()) return fail(a, raw.error().message);
  auto quote = attest::parse_quote(*raw);
  if (!quote.ok()) return fail(a, quote.error().message);
  if (a.collateral_file.empty()) {
    const nlohmann::ordered_json j = attest::quote_to_json(*quote);
    nlohmann::ordered_json out;
    out["verified"] = false;
    out["note"] = "parsed only (no --collateral given)";
    for (auto it = j.begin(); it != j.end(); ++it) out[it.key()] = it.value();
    print_fields(out, a.json);
    return 0;
  }
  auto text = read_file(a.collateral_file);
  if (!text.ok()) return fail(a, text.error().message);
  auto coll = attest::parse_collateral_json(*text);
  if (!coll.ok()) return fail(a, coll.error().wrap(a.collateral_file).message);
  attest::TrustOptions trust;
  if (!a.root_ca_file.empty()) {
    auto pem = read_file(a.root_ca_file);
    if (!pem.ok()) return fail(a, pem.error().message);
    // An explicitly given root replaces the pinned Intel root: the caller opted in.
    trust.trust_intel_root = false;
    trust.extra_root_pems.push_back(*pem);
  }
  int64_t now = a.time != 0 ? a.time : static_cast<int64_t>(std::time(nullptr));
  auto rep = attest::verify_quote(*raw, *coll, now, trust);
  if (!rep.ok()) return fail(a, rep.error().message);
  nlohmann::ordered_json out;
  out["verified"] = true;
  out["verification_time"] = now;
  const nlohmann::ordered_json j = attest::verified_report_to_json(*rep);
  for (auto it = j.begin(); it != j.end(); ++it) out[it.key()] = it.value();
  print_fields(out, a.json);
  return 0;
}

}  // namespace

Runner add_quote_command(CLI::App& app) {
  auto args = std::make_shared<QuoteArgs>();
  app.add_option("--quote", args->quote_file, "Quote file (raw bytes, or hex text with --hex)")->required();
  app.add_flag("--hex", args->hex, "The quote file is hex text (optional 0x prefix, whitespace ignored)");
  app.add_option("--collateral", args->collateral_file,
                 "Collateral JSON (pck_crl, tcb_info, qe_identity, ...); without it the quote is only parsed");
  app.add_option("--time", args->time, "Verification time, unix seconds (default: now)");
  app.add_option("--root-ca", args->root_ca_file,
                 "Trust this root CA (PEM) INSTEAD of the pinned Intel SGX Root CA (e.g. a simulated platform)");
  app.add_flag("--json", args->json, "Print one line of JSON instead of key: value lines");
  return [args] { return run_quote(*args); };
}

}  // namespace dstack::verify_cli
