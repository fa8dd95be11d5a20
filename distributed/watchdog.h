// Watchdog: turns a collective that takes longer than a timeout into an abort of the whole job, with a
// message naming the collective, the step and the rank that waited. A rank that hangs (deadlock, a stuck
// file system, a rank sleeping outside the collective) otherwise leaves the others blocked forever.
//
//   auto id = Watchdog::get().begin("all_reduce bucket 3 (24.9 MB)");   // the communicators do this
//   ... blocking collective ...
//   Watchdog::get().end(id);
//
// For GPU collectives, which the host does not wait on, begin() takes a poll function (cudaEventQuery of
// the collective's completion event); the watchdog thread polls it and retires the entry itself.
// World::init starts the watchdog with WorldOptions::timeout_s (the config key train.watchdog_s), World::finalize
// stops it.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace cm::dist {

class Watchdog {
 public:
  using Id = uint64_t;
  static Watchdog& get();

  // (Re)starts the watchdog thread with this timeout; timeout_s <= 0 stops it.
  void start(double timeout_s);
  void stop();

  // A collective began. `poll`, when given, returns true once it has finished (then end() is optional).
  Id begin(std::string what, std::function<bool()> poll = {});
  void end(Id id);

  ~Watchdog();

 private:
  Watchdog() = default;
  struct Entry {
    std::string what;
    int64_t step;
    std::chrono::steady_clock::time_point start;
    std::function<bool()> poll;
  };
  void loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<Id, Entry> entries_;
  Id next_id_ = 1;
  double timeout_s_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace cm::dist
