#include "core/signals.hpp"

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <thread>

namespace evp {

void InstallStopSignals(std::atomic<bool>& stop) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  std::thread([set, &stop] {
    int sig = 0;
    while (sigwait(&set, &sig) == 0) {
      if (stop.exchange(true)) {
        std::fprintf(stderr, "second signal %d: exiting now\n", sig);
        _exit(130);
      }
      std::fprintf(stderr, "signal %d: draining (send again to exit at once)\n", sig);
    }
  }).detach();
}

}  // namespace evp
