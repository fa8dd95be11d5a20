// The collective watchdog (see watchdog.h).
#include "distributed/watchdog.h"

#include <algorithm>
#include <fmt/format.h>
#include "distributed/guard.h"

namespace cm::dist {

Watchdog& Watchdog::get() {
  static Watchdog w;
  return w;
}

Watchdog::~Watchdog() { stop(); }

void Watchdog::start(double timeout_s) {
  stop();
  if (timeout_s <= 0) return;
  std::lock_guard<std::mutex> lk(mu_);
  timeout_s_ = timeout_s;
  stop_ = false;
  thread_ = std::thread(&Watchdog::loop, this);
}

void Watchdog::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lk(mu_);
  timeout_s_ = 0;
}

Watchdog::Id Watchdog::begin(std::string what, std::function<bool()> poll) {
  std::lock_guard<std::mutex> lk(mu_);
  const Id id = next_id_++;
  if (timeout_s_ > 0)
    entries_.emplace(id, Entry{std::move(what), current_step(), std::chrono::steady_clock::now(), std::move(poll)});
  return id;
}

void Watchdog::end(Id id) {
  std::lock_guard<std::mutex> lk(mu_);
  entries_.erase(id);
}

void Watchdog::loop() {
  std::unique_lock<std::mutex> lk(mu_);
  // Poll often enough that the abort comes within ~5 % of the timeout, but not more than 100 times a second.
  const auto period = std::chrono::duration<double>(std::clamp(timeout_s_ / 20.0, 0.01, 1.0));
  while (!stop_) {
    cv_.wait_for(lk, period);
    if (stop_) break;
    const auto now = std::chrono::steady_clock::now();
    for (auto it = entries_.begin(); it != entries_.end();) {
      Entry& e = it->second;
      if (e.poll) {
        bool done = false;
        std::string failure;
        try {
          done = e.poll();
        } catch (const std::exception& ex) {
          failure = ex.what();
        }
        if (!failure.empty()) {
          lk.unlock();
          abort_job(fmt::format("watchdog: collective '{}' failed: {}", e.what, failure), 3);
        }
        if (done) {
          it = entries_.erase(it);
          continue;
        }
      }
      const double waited = std::chrono::duration<double>(now - e.start).count();
      if (waited > timeout_s_) {
        const std::string msg = fmt::format(
            "watchdog: collective '{}' (entered at step {}) has not completed after {:.1f} s (timeout {} s). "
            "Another rank is probably dead, hung, or not calling this collective (a rank that failed prints its "
            "own message). If steps are legitimately this slow, raise train.watchdog_s.",
            e.what, e.step, waited, timeout_s_);
        lk.unlock();
        abort_job(msg, 3);
      }
      ++it;
    }
  }
}

}  // namespace cm::dist
