// WorkerThread: one long-lived thread that runs the tasks handed to it in order.
#include "core/worker_thread.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <numeric>
#include <stdexcept>
#include <thread>
#include <vector>

namespace evp {
namespace {

TEST(WorkerThread, RunsEveryTaskOnItsOneThreadInTheOrderGiven) {
  WorkerThread worker;
  std::vector<int> order;  // only the worker writes it
  std::vector<std::future<std::thread::id>> ids;
  ids.reserve(50);
  for (int i = 0; i < 50; ++i) {
    ids.push_back(worker.Run([&order, i] {
      order.push_back(i);
      return std::this_thread::get_id();
    }));
  }
  const std::thread::id first = ids.front().get();
  EXPECT_NE(first, std::this_thread::get_id());
  for (size_t i = 1; i < ids.size(); ++i) EXPECT_EQ(ids[i].get(), first) << "task " << i;
  std::vector<int> expected(50);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(order, expected);
}

TEST(WorkerThread, HandsATasksExceptionToItsFutureAndRunsTheNextTask) {
  WorkerThread worker;
  auto failed = worker.Run([]() -> int { throw std::runtime_error("boom"); });
  auto next = worker.Run([] { return 7; });
  EXPECT_THROW(failed.get(), std::runtime_error);
  EXPECT_EQ(next.get(), 7);
}

TEST(WorkerThread, RunsTheQueuedTasksBeforeItsDestructorReturns) {
  std::atomic<int> ran{0};
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  {
    WorkerThread worker;
    worker.Run([released] { released.wait(); });  // holds the queue behind it
    for (int i = 0; i < 10; ++i) worker.Run([&ran] { ++ran; });
    release.set_value();
  }
  EXPECT_EQ(ran.load(), 10);
}

TEST(WaitOnExit, WaitsForTheFuturesWhenAnExceptionLeavesTheScope) {
  WorkerThread worker;
  std::atomic<bool> finished{false};
  std::promise<void> started;
  auto started_future = started.get_future();
  try {
    std::vector<std::future<void>> futures;
    WaitOnExit wait(futures);
    futures.push_back(worker.Run([&finished, &started] {
      started.set_value();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the work, not a sync
      finished = true;
    }));
    started_future.wait();
    throw std::runtime_error("the caller fails meanwhile");
  } catch (const std::runtime_error&) {
    EXPECT_TRUE(finished.load()) << "the scope was left while its task still ran";
  }
}

}  // namespace
}  // namespace evp
