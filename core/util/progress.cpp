// Progress lines with ETA (see progress.h).
#include "core/util/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fmt/format.h>

namespace cm::data {

std::string format_duration(double seconds) {
  const int64_t s = int64_t(std::llround(std::max(0.0, seconds)));
  if (s >= 3600) return fmt::format("{}:{:02d}:{:02d}", s / 3600, (s / 60) % 60, s % 60);
  return fmt::format("{}:{:02d}", s / 60, s % 60);
}

Progress::Progress(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled), tty_(::isatty(STDERR_FILENO) == 1) {
  start_ = last_ = std::chrono::steady_clock::now();
}

void Progress::add(int64_t n) {
  done_ += n;
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_).count();
  if (since >= (tty_ ? 1.0 : 10.0)) {
    last_ = now;
    print(false);
  }
}

void Progress::finish() {
  if (enabled_) print(true);
}

void Progress::print(bool final) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? double(done_) / elapsed : 0.0;
  std::string line;
  if (final) {
    line = fmt::format("{}: {} records in {} ({:.0f}/s)", label_, done_, format_duration(elapsed), rate);
  } else {
    const double pct = total_ > 0 ? 100.0 * double(done_) / double(total_) : 0.0;
    const std::string eta = rate > 0 ? format_duration(double(total_ - done_) / rate) : "?";
    line = fmt::format("{}: {}/{} ({:.1f}%) {:.0f}/s, ETA {}", label_, done_, total_, pct, rate, eta);
  }
  if (tty_)
    fmt::print(stderr, "\r\033[K{}{}", line, final ? "\n" : "");
  else
    fmt::print(stderr, "{}\n", line);
  std::fflush(stderr);
}

}  // namespace cm::data
