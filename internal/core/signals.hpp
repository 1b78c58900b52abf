#pragma once
// SIGINT/SIGTERM handling for the binaries: the first signal sets the stop flag (graceful
// drain) and arms a watchdog: a process still running `grace` later exits with status 1
// (unsettled messages are redelivered after AckWait). A second signal exits at once. Call before
// starting any thread, so every thread inherits the blocked signal mask and only the watcher thread
// receives them.
// `report` receives one line per event ("signal 15: draining ..."), from the watcher thread
// (not a signal handler: logging is safe there); without it the lines go to stderr.
#include <atomic>
#include <chrono>
#include <functional>
#include <string_view>

namespace evp {

void InstallStopSignals(std::atomic<bool>& stop, std::chrono::milliseconds grace,
                        std::function<void(std::string_view)> report = {});

}  // namespace evp
