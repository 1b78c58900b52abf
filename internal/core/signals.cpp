#include "core/signals.hpp"

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <string>
#include <thread>

namespace evp {

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
