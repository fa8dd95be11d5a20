// A small fixed pool of worker threads: fire-and-forget tasks and a blocking parallel_for. Used by the
// converters (decode + resize in parallel) and by the loader (uint8 -> float and flips off the I/O thread).
#pragma once
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace cm::data {

class ThreadPool {
 public:
  explicit ThreadPool(int threads) {
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { loop(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()); }

  // Runs `task` on a worker. Tasks must not throw (catch inside and report through their own state).
  void submit(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

  // fn(i) for i in [0, n), spread over the workers and the calling thread; rethrows the first exception.
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
    if (n <= 0) return;
    if (workers_.empty() || n == 1) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    // Shared state is reference-counted: a helper may still look at it after the last item is done and
    // this call has returned. `fn` itself is only called for claimed items, all finished before we return.
    struct Shared {
      std::mutex mu;
      std::condition_variable cv;
      int64_t next = 0, done = 0, n = 0;
      std::exception_ptr error;
      const std::function<void(int64_t)>* fn = nullptr;
    };
    auto s = std::make_shared<Shared>();
    s->n = n;
    s->fn = &fn;
    auto work = [s] {
      for (;;) {
        int64_t i;
        bool failed;
        {
          std::lock_guard<std::mutex> lock(s->mu);
          if (s->next >= s->n) return;
          i = s->next++;
          failed = bool(s->error);
        }
        try {
          if (!failed) (*s->fn)(i);
        } catch (...) {
          std::lock_guard<std::mutex> lock(s->mu);
          if (!s->error) s->error = std::current_exception();
        }
        std::lock_guard<std::mutex> lock(s->mu);
        if (++s->done == s->n) s->cv.notify_all();
      }
    };
    const int helpers = int(std::min<int64_t>(n - 1, int64_t(workers_.size())));
    for (int h = 0; h < helpers; ++h) submit(work);
    work();
    std::unique_lock<std::mutex> lock(s->mu);
    s->cv.wait(lock, [&] { return s->done == s->n; });
    if (s->error) std::rethrow_exception(s->error);
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
        if (stop_ && tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> workers_;
  bool stop_ = false;
};

}  // namespace cm::data
