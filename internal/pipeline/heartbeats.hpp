#pragma once
// In-progress acks (+WPI) for the batches a consumer loop holds: pulled, waiting, being written.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "pipeline/ports.hpp"

namespace evp::pipeline {

// Sends each held batch an in-progress ack every `interval` from when it was pulled, from one
// thread that lives as long as the loop (a thread per batch would cost a clone and a stack
// each time, hundreds per second when batches are small).
class Heartbeats {
 public:
  // Keeps one batch's messages alive until destroyed. Once the destructor has returned, no
  // in-progress ack for the batch is being sent or will be.
  class Beat {
   public:
    Beat(Heartbeats& owner, uint64_t id) : owner_(owner), id_(id) {}
    ~Beat() { owner_.Stop(id_); }
    Beat(const Beat&) = delete;
    Beat& operator=(const Beat&) = delete;

   private:
    Heartbeats& owner_;
    uint64_t id_;
  };

  // interval 0: in-progress acks are off (no thread).
  Heartbeats(EventSource& source, std::chrono::milliseconds interval);
  // Every Beat must be gone by then.
  ~Heartbeats();
  Heartbeats(const Heartbeats&) = delete;
  Heartbeats& operator=(const Heartbeats&) = delete;

  // Starts the in-progress acks of batch `token`; nullptr when they are off.
  std::unique_ptr<Beat> Start(uint64_t token);

 private:
  struct Due {
    uint64_t token;
    std::chrono::steady_clock::time_point at;
  };
  static constexpr uint64_t kNone = ~uint64_t{0};

  void Stop(uint64_t id);
  void Run();

  EventSource& source_;
  const std::chrono::milliseconds interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Due> beats_;  // by id
  uint64_t next_id_ = 0;
  uint64_t sending_ = kNone;  // the beat whose in-progress ack is being sent
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace evp::pipeline
