#pragma once
// `eventctl load`: a load generator publishing realistic events with async JetStream
// publishes and unique Nats-Msg-Ids, at a target rate, with a live progress line and a final
// report.
#include <CLI/CLI.hpp>

#include "config/config.hpp"

namespace evp::eventctl {

std::function<int(const Config&)> AddLoadCommand(CLI::App& app);

}  // namespace evp::eventctl
