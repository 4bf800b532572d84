// dstack-verify: offline verification of attestation evidence.
#include <CLI/CLI.hpp>
#include <map>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"dstack-verify: offline verification of TDX/SGX attestation evidence"};
  app.require_subcommand(1);
  std::map<CLI::App*, dstack::verify_cli::Runner> runners;
  auto* quote = app.add_subcommand("quote", "Parse and verify an Intel DCAP quote (TDX v4/v5, SGX v3)");
  runners[quote] = dstack::verify_cli::add_quote_command(*quote);
  auto* kms = app.add_subcommand("kms", "Check a deployed KMS: GetMeta, key binding to its TDX quote, response time");
  runners[kms] = dstack::verify_cli::add_kms_command(*kms);
  CLI11_PARSE(app, argc, argv);
  for (auto& [sub, run] : runners) {
    if (sub->parsed()) return run();
  }
  return 2;
}
