// Subcommands of dstack-verify. Each add_*_command registers its options on `app` and returns a callback that
// runs the command and yields the process exit code. Add new subcommands (e.g. `kms`) the same way.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace dstack::verify_cli {

using Runner = std::function<int()>;

// `quote --quote FILE [--hex] [--collateral FILE] [--time UNIX] [--root-ca PEM] [--json]`
Runner add_quote_command(CLI::App& app);

// `kms --url https://HOST:PORT [--root-ca PEM --collateral FILE | --sim-platform DIR --allow-sim-root]
//      [--max-ms 1000] [--json]` (or --meta-file GETMETA.json for a saved backup)
Runner add_kms_command(CLI::App& app);

}  // namespace dstack::verify_cli
