#pragma once
// `eventctl exhausted ...`: list, show, redrive and resolve exhausted events.
#include <CLI/CLI.hpp>

#include "config/config.hpp"

namespace evp::eventctl {

// Registers the subcommands; the returned callback runs the chosen one (after the
// configuration is loaded) and returns the exit code.
std::function<int(const Config&)> AddExhaustedCommands(CLI::App& app);

}  // namespace evp::eventctl
