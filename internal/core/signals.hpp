#pragma once
// SIGINT/SIGTERM handling for the binaries: the first signal sets the stop flag (graceful
// drain); a second one exits at once. Call before starting any thread, so every thread
// inherits the blocked signal mask and only the watcher thread receives them.
#include <atomic>

namespace evp {

void InstallStopSignals(std::atomic<bool>& stop);

}  // namespace evp
