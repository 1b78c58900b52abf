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
#include <optional>
#include <string_view>

namespace evp {

void InstallStopSignals(std::atomic<bool>& stop, std::chrono::milliseconds grace,
                        std::function<void(std::string_view)> report = {});

// What is left of `grace` since the first stop signal (all of it when none came), at least
// `floor`: the budget of the last step of a shutdown (draining NATS), so that the process exits
// 0 before the watchdog, also after a slow in-flight batch.
std::chrono::milliseconds GraceLeft(
    std::chrono::milliseconds grace,
    std::chrono::milliseconds floor = std::chrono::milliseconds(500));
// The same, pure: `signalled` is when the first signal came (nullopt: none).
std::chrono::milliseconds GraceLeft(std::chrono::milliseconds grace,
                                    std::chrono::milliseconds floor,
                                    std::optional<std::chrono::steady_clock::time_point> signalled,
                                    std::chrono::steady_clock::time_point now);

}  // namespace evp
