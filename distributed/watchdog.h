// A watchdog thread for multi-rank jobs: the trainer reports progress (a step boundary, or entering and
// leaving a collective); if no report arrives within the timeout, the watchdog aborts the whole job with
// a message naming the rank, the step and what it was waiting in. Why: a rank that hangs (not dies) would
// otherwise leave every other rank blocked in MPI_Allreduce forever, burning the allocation.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace cm {

class Watchdog {
 public:
  // timeout_s <= 0 disables the watchdog.
  explicit Watchdog(double timeout_s);
  ~Watchdog();
  // Progress: `what` says where the rank is ("step 12: gradient all-reduce").
  void beat(int64_t step, const char* what);

 private:
  void loop();
  double timeout_s_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  int64_t step_ = -1;
  const char* what_ = "start-up";
  std::chrono::steady_clock::time_point last_;
  std::thread thread_;
};

}  // namespace cm
