// Logging for multi-rank jobs: log0 prints on rank 0 only (every rank with WorldOptions::log_all_ranks),
// prefixed "[rank r/W]" when there is more than one rank (log_line(line, true): every rank). Lines are written
// whole and flushed so that the output of several ranks does not interleave mid-line.
#pragma once
#include <fmt/format.h>
#include <string>

namespace cm::dist {

void log_line(const std::string& line, bool every_rank);

template <typename... A>
void log0(fmt::format_string<A...> f, A&&... args) {
  log_line(fmt::format(f, std::forward<A>(args)...), false);
}

}  // namespace cm::dist
