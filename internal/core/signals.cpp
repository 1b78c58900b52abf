#include "core/signals.hpp"

#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>

namespace evp {
namespace {

// steady_clock time of the first stop signal, in its own ticks since its epoch (0: none yet).
std::atomic<std::chrono::steady_clock::rep> first_signal{0};

}  // namespace

std::chrono::milliseconds GraceLeft(std::chrono::milliseconds grace,
                                    std::chrono::milliseconds floor,
                                    std::optional<std::chrono::steady_clock::time_point> signalled,
                                    std::chrono::steady_clock::time_point now) {
  if (!signalled) return std::max(grace, floor);
  const auto used = std::chrono::duration_cast<std::chrono::milliseconds>(now - *signalled);
  return std::max(grace - used, floor);
}

std::chrono::milliseconds GraceLeft(std::chrono::milliseconds grace,
                                    std::chrono::milliseconds floor) {
  const auto ticks = first_signal.load();
  std::optional<std::chrono::steady_clock::time_point> signalled;
  if (ticks != 0) {
    signalled = std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(ticks));
  }
  return GraceLeft(grace, floor, signalled, std::chrono::steady_clock::now());
}

void InstallStopSignals(std::atomic<bool>& stop, std::chrono::milliseconds grace,
                        std::function<void(std::string_view)> report) {
  if (!report)
    report = [](std::string_view line) {
      std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
    };
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  std::thread([set, &stop, grace, report] {
    int sig = 0;
    while (sigwait(&set, &sig) == 0) {
      // When the grace began, set before `stop` so that no shutdown sees the flag without it.
      std::chrono::steady_clock::rep none = 0;
      first_signal.compare_exchange_strong(
          none, std::chrono::steady_clock::now().time_since_epoch().count());
      if (stop.exchange(true)) {
        report("second signal " + std::to_string(sig) + ": exiting now");
        _exit(130);
      }
      report("signal " + std::to_string(sig) + ": draining (send again to exit at once)");
      std::thread([grace, report] {
        std::this_thread::sleep_for(grace + std::chrono::seconds(2));
        report("shutdown grace of " + std::to_string(grace.count()) + " ms exceeded: exiting now");
        _exit(1);
      }).detach();
    }
  }).detach();
}

}  // namespace evp
