#include "core/signals.hpp"

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <thread>

namespace evp {

void InstallStopSignals(std::atomic<bool>& stop, std::chrono::milliseconds grace) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  std::thread([set, &stop, grace] {
    int sig = 0;
    while (sigwait(&set, &sig) == 0) {
      if (stop.exchange(true)) {
        std::fprintf(stderr, "second signal %d: exiting now\n", sig);
        _exit(130);
      }
      std::fprintf(stderr, "signal %d: draining (send again to exit at once)\n", sig);
      std::thread([grace] {
        std::this_thread::sleep_for(grace + std::chrono::seconds(2));
        std::fprintf(stderr, "shutdown grace of %lld ms exceeded: exiting now\n",
                     static_cast<long long>(grace.count()));
        _exit(1);
      }).detach();
    }
  }).detach();
}

}  // namespace evp
