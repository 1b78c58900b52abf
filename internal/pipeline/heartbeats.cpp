#include "pipeline/heartbeats.hpp"

#include <algorithm>

namespace evp::pipeline {

using std::chrono::steady_clock;

Heartbeats::Heartbeats(EventSource& source, std::chrono::milliseconds interval)
    : source_(source), interval_(interval) {
  if (interval_.count() > 0) thread_ = std::thread([this] { Run(); });
}

Heartbeats::~Heartbeats() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::unique_ptr<Heartbeats::Beat> Heartbeats::Start(uint64_t token) {
  if (interval_.count() <= 0) return nullptr;
  uint64_t id = 0;
  {
    std::lock_guard lock(mu_);
    id = next_id_++;
    beats_.emplace(id, Due{token, steady_clock::now() + interval_});
  }
  cv_.notify_all();
  return std::make_unique<Beat>(*this, id);
}

void Heartbeats::Stop(uint64_t id) {
  std::unique_lock lock(mu_);
  beats_.erase(id);
  cv_.wait(lock, [&] { return sending_ != id; });
}

void Heartbeats::Run() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    auto next = std::min_element(beats_.begin(), beats_.end(), [](const auto& a, const auto& b) {
      return a.second.at < b.second.at;
    });
    if (next == beats_.end()) {
      cv_.wait(lock);
      continue;
    }
    const auto now = steady_clock::now();
    if (now < next->second.at) {
      // A copy: wait_until reads its deadline again after waking, and the beat may be gone.
      const steady_clock::time_point due = next->second.at;
      cv_.wait_until(lock, due);
      continue;
    }
    next->second.at = now + interval_;
    const uint64_t token = next->second.token;
    sending_ = next->first;
    lock.unlock();
    source_.InProgress(token);
    lock.lock();
    sending_ = kNone;
    cv_.notify_all();
  }
}

}  // namespace evp::pipeline
