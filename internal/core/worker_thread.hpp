#pragma once
// A thread that lives as long as its owner and runs the tasks handed to it, one after the
// other. The batch pipeline hands it work for every batch (a fetch ahead, a write, one
// connection's share of a write): a thread started per batch with std::async costs a clone,
// fresh stack pages and an empty allocator cache each time, and its exit returns the stack to
// the kernel (madvise, a TLB flush on every core).
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace evp {

class WorkerThread {
 public:
  WorkerThread();
  // Runs the tasks still queued, then joins.
  ~WorkerThread();
  WorkerThread(const WorkerThread&) = delete;
  WorkerThread& operator=(const WorkerThread&) = delete;

  // Queues `task`; its result (or exception) arrives through the future.
  template <typename F>
  std::future<std::invoke_result_t<F&>> Run(F task) {
    using R = std::invoke_result_t<F&>;
    auto packaged = std::make_shared<std::packaged_task<R()>>(std::move(task));
    std::future<R> result = packaged->get_future();
    Post([packaged] { (*packaged)(); });
    return result;
  }

 private:
  void Post(std::function<void()> task);
  void Loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts once the members above exist
};

// Waits for the futures when it goes out of scope, also when an exception leaves it: their
// tasks may use the caller's locals (a std::async future waits in its destructor; these do not).
template <typename T>
class WaitOnExit {
 public:
  explicit WaitOnExit(std::vector<std::future<T>>& futures) : futures_(futures) {}
  ~WaitOnExit() {
    for (auto& f : futures_) {
      if (f.valid()) f.wait();
    }
  }
  WaitOnExit(const WaitOnExit&) = delete;
  WaitOnExit& operator=(const WaitOnExit&) = delete;

 private:
  std::vector<std::future<T>>& futures_;
};

}  // namespace evp
