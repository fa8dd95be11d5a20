// Running the `cm` program from a test: its exit code and output, with the command line first in the output so
// that a failing assertion shows what ran.
#pragma once
#include <string>
#include <fmt/format.h>
#include "support/paths.h"

namespace cm::test {

struct Run {
  int rc = -1;
  std::string out;  // the command line, then stdout and stderr
};

// `cm ARGS` with one OpenMP thread, after `launcher` (e.g. mpirun_prefix(2) of support/mpi_launch.h, or "").
inline Run run_cm(const std::string& args, const std::string& launcher = "") {
  Run r;
  const std::string cmd = fmt::format("OMP_NUM_THREADS=1 {}{} {}", launcher, cm_binary(), args);
  r.rc = run_command(cmd, &r.out);
  r.out = cmd + "\n" + r.out;
  return r;
}

}  // namespace cm::test
