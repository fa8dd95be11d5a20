// Progress of a long job on stderr: count, rate and estimated time left, at most once a second (one
// line every ten seconds when stderr is not a terminal, so logs stay short).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace cm::data {

class Progress {
 public:
  Progress(std::string label, int64_t total, bool enabled = true);
  void add(int64_t n);
  void finish();  // final line with the total time
  int64_t done() const { return done_; }

 private:
  void print(bool final);
  std::string label_;
  int64_t total_, done_ = 0;
  bool enabled_, tty_;
  std::chrono::steady_clock::time_point start_, last_;
};

std::string format_duration(double seconds);  // "1:02:03" / "2:03"

}  // namespace cm::data
