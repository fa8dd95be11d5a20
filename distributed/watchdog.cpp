// Watchdog (see watchdog.h).
#include "distributed/watchdog.h"

#include <fmt/format.h>
#include "distributed/world.h"

namespace cm {

Watchdog::Watchdog(double timeout_s) : timeout_s_(timeout_s), last_(std::chrono::steady_clock::now()) {
  if (timeout_s_ > 0) thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::beat(int64_t step, const char* what) {
  if (timeout_s_ <= 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  step_ = step;
  what_ = what;
  last_ = std::chrono::steady_clock::now();
}

void Watchdog::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::milliseconds(200));
    if (stop_) break;
    const double idle = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_).count();
    if (idle > timeout_s_) {
      // MPI_Abort from this thread: the main thread is blocked (that is the point), and OpenMPI's abort
      // only signals the runtime, which tears the job down.
      abort_world(fmt::format("watchdog: no progress for {:.0f} s (train.watchdog_s = {:.0f}) at step {}, in {}: another rank "
                              "is probably hung or dead; aborting the job",
                              idle, timeout_s_, step_, what_),
                  3);
    }
  }
}

}  // namespace cm
