// Optional Chrome-trace timeline of one rank (open in chrome://tracing or ui.perfetto.dev): the phases of a
// step (forward, backward, optimizer, EMA) on the thread that runs them and each bucket's all-reduce on the
// communication thread, so overlap of communication with backward can be seen, and checked by tests.
//
//   cm::dist::Timeline tl(fmt::format("{}/trace-rank{}.json", dir, rank), rank);  // "" = disabled, free
//   { auto s = tl.scope("forward"); ... }
//   comm->set_timeline(&tl);     // the communicator records its collectives
//   tl.write();                  // also done by the destructor
//
// File: {"traceEvents": [{"name", "cat", "ph": "X", "ts" (us), "dur" (us), "pid": rank, "tid", "args"}...]}
// plus "M" (metadata) events naming the process "rank R" and each thread. Times are CLOCK_MONOTONIC
// microseconds, comparable between the ranks of one node.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace cm::dist {

class Timeline {
 public:
  Timeline() = default;  // disabled
  Timeline(std::string path, int rank);
  ~Timeline();
  Timeline(const Timeline&) = delete;
  Timeline& operator=(const Timeline&) = delete;

  bool enabled() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  static int64_t now_us();

  // A complete event on the calling thread. `args_json` is a JSON object body ("\"bytes\": 12") or "".
  void add(const std::string& name, const std::string& category, int64_t start_us, int64_t end_us,
           const std::string& args_json = "");
  // Names the calling thread in the trace ("main", "comm").
  void name_thread(const std::string& name);

  class Scope {
   public:
    Scope(Timeline* tl, std::string name, std::string category);
    Scope(Scope&& o) noexcept;
    Scope(const Scope&) = delete;
    ~Scope();

   private:
    Timeline* tl_;
    std::string name_, category_;
    int64_t start_;
  };
  [[nodiscard]] Scope scope(std::string name, std::string category = "step") {
    return Scope(enabled() ? this : nullptr, std::move(name), std::move(category));
  }

  struct Event {
    std::string name, category, args;
    int64_t ts, dur;  // microseconds
    int tid;
  };
  size_t events() const;
  std::vector<Event> snapshot() const;
  // Writes the whole trace (to PATH.tmp, then renamed over PATH). Throws on I/O errors.
  void write() const;

 private:
  int tid_locked();

  std::string path_;
  int rank_ = 0;
  mutable std::mutex mu_;
  std::vector<Event> events_;
  std::map<std::thread::id, int> tids_;
  std::map<int, std::string> thread_names_;
};

}  // namespace cm::dist
