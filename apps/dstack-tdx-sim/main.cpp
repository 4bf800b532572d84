// dstack-tdx-sim: a SIMULATED Intel TDX/DCAP platform (fake root CA; never trusted unless a verifier opts in).
//   dstack-tdx-sim init --dir D
//   dstack-tdx-sim quote --dir D --report-data HEX [--mrtd HEX] [--rtmr0..3 HEX] [--mr-config-id HEX] --out FILE
//   dstack-tdx-sim collateral --dir D --out FILE.json [--time UNIX] [--sgx]
#include <CLI/CLI.hpp>

#include <ctime>
#include <iostream>

#include "attest/sim/platform.h"
#include "base/fs.h"
#include "base/log.h"

using namespace dstack;
using namespace dstack::attest::sim;

namespace {

int fail(const std::string& msg) {
  std::cerr << "error: " << msg << "\n";
  return 1;
}

bool parse_hex_opt(const std::string& name, const std::string& value, Bytes& out, std::string& err) {
  if (value.empty()) return true;
  auto b = from_hex(value);
  if (!b) {
    err = "--" + name + ": " + b.error().message;
    return false;
  }
  out = std::move(b).value();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  init_logging("dstack-tdx-sim", "warn");
  CLI::App app{"Simulated Intel TDX/DCAP platform for dstack-cpp (NOT a real TEE; its root CA is not Intel's)"};
  app.require_subcommand(1);
  std::string dir;

  auto* init = app.add_subcommand("init", "create a simulated platform (root CA, PCK chain, QE key) in --dir");
  init->add_option("--dir", dir, "platform directory")->required();

  auto* quote = app.add_subcommand("quote", "produce a TDX v4 quote (or SGX v3 with --sgx)");
  quote->add_option("--dir", dir, "platform directory")->required();
  std::string report_data, mrtd, rtmr[4], mr_config_id, mr_owner, mr_owner_config, td_attributes, tee_tcb_svn, out;
  std::string mr_enclave, mr_signer;
  bool sgx = false;
  quote->add_option("--report-data", report_data, "report data, hex (<= 64 bytes, zero padded)")->required();
  quote->add_option("--mrtd", mrtd, "MRTD, 48 bytes hex");
  for (int i = 0; i < 4; ++i) quote->add_option("--rtmr" + std::to_string(i), rtmr[i], "RTMR, 48 bytes hex");
  quote->add_option("--mr-config-id", mr_config_id, "MR_CONFIG_ID, 48 bytes hex");
  quote->add_option("--mr-owner", mr_owner, "MR_OWNER, 48 bytes hex");
  quote->add_option("--mr-owner-config", mr_owner_config, "MR_OWNER_CONFIG, 48 bytes hex");
  quote->add_option("--td-attributes", td_attributes, "TD_ATTRIBUTES, 8 bytes hex");
  quote->add_option("--tee-tcb-svn", tee_tcb_svn, "TEE_TCB_SVN, 16 bytes hex");
  quote->add_flag("--sgx", sgx, "produce an SGX v3 quote instead");
  quote->add_option("--mr-enclave", mr_enclave, "SGX MRENCLAVE, 32 bytes hex");
  quote->add_option("--mr-signer", mr_signer, "SGX MRSIGNER, 32 bytes hex");
  quote->add_option("--out", out, "output file (binary quote)")->required();

  auto* coll = app.add_subcommand("collateral", "write collateral JSON valid from time-1d to time+30d");
  coll->add_option("--dir", dir, "platform directory")->required();
  int64_t at = static_cast<int64_t>(std::time(nullptr));
  bool coll_sgx = false;
  std::string coll_out;
  coll->add_option("--time", at, "unix time (default now)");
  coll->add_flag("--sgx", coll_sgx, "collateral for SGX quotes");
  coll->add_option("--out", coll_out, "output JSON file")->required();

  CLI11_PARSE(app, argc, argv);

  if (*init) {
    auto p = SimPlatform::create(dir);
    if (!p) return fail(p.error().message);
    std::cout << "simulated platform created in " << dir << "; root CA: " << dir << "/root-ca.pem\n";
    return 0;
  }
  auto p = SimPlatform::load(dir);
  if (!p) return fail(p.error().message);
  if (*quote) {
    std::string err;
    Result<Bytes> q = make_error("unreachable");
    if (sgx) {
      SgxQuoteInput in;
      if (!parse_hex_opt("report-data", report_data, in.report_data, err) ||
          !parse_hex_opt("mr-enclave", mr_enclave, in.mr_enclave, err) ||
          !parse_hex_opt("mr-signer", mr_signer, in.mr_signer, err)) {
        return fail(err);
      }
      q = p->quote_sgx(in);
    } else {
      TdQuoteInput in;
      if (!parse_hex_opt("report-data", report_data, in.report_data, err) ||
          !parse_hex_opt("mrtd", mrtd, in.mr_td, err) || !parse_hex_opt("rtmr0", rtmr[0], in.rtmr0, err) ||
          !parse_hex_opt("rtmr1", rtmr[1], in.rtmr1, err) || !parse_hex_opt("rtmr2", rtmr[2], in.rtmr2, err) ||
          !parse_hex_opt("rtmr3", rtmr[3], in.rtmr3, err) ||
          !parse_hex_opt("mr-config-id", mr_config_id, in.mr_config_id, err) ||
          !parse_hex_opt("mr-owner", mr_owner, in.mr_owner, err) ||
          !parse_hex_opt("mr-owner-config", mr_owner_config, in.mr_owner_config, err) ||
          !parse_hex_opt("td-attributes", td_attributes, in.td_attributes, err) ||
          !parse_hex_opt("tee-tcb-svn", tee_tcb_svn, in.tee_tcb_svn, err)) {
        return fail(err);
      }
      q = p->quote_tdx(in);
    }
    if (!q) return fail(q.error().message);
    auto st = write_file_atomic(out, ByteView(*q));
    if (!st) return fail(st.error().message);
    return 0;
  }
  if (*coll) {
    auto c = coll_sgx ? p->sgx_collateral_json(at) : p->tdx_collateral_json(at);
    if (!c) return fail(c.error().message);
    auto st = write_file_atomic(coll_out, *c);
    if (!st) return fail(st.error().message);
    return 0;
  }
  return 0;
}
