#pragma once
// SIGINT/SIGTERM handling for the binaries: the first signal sets the stop flag (graceful
// drain) and arms a watchdog: a process still running `grace` later exits with status 1
// (unsettled messages are redelivered after AckWait). A second signal exits at once. Call before
// starting any thread, so every thread inherits the blocked signal mask and only the watcher thread
// receives them.
#include <atomic>
#include <chrono>

namespace evp {

void InstallStopSignals(std::atomic<bool>& stop, std::chrono::milliseconds grace);

}  // namespace evp
