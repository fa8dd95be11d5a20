// Multi-rank tests from inside a gtest: the mpirun prefix of a `cm` job's command line; run a test executable
// under `mpirun -np W` with a scenario chosen through the environment, bounded by a timeout, and find processes
// it may have left behind.
//   auto r = cm::test::mpirun(3, cm::test::self_exe() + " --gtest_filter=DistWorker.Run", {{"CM_DIST_SCENARIO", "x"}}, 60);
// The executable's worker test reads the scenario from the environment (mpirun -x) and writes its results to
// files the calling test compares.
#pragma once
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <unistd.h>
#include <fmt/format.h>
#include "support/paths.h"

namespace cm::test {

struct MpiRun {
  int rc = -1;
  std::string output;  // stdout and stderr of all ranks and of mpirun
  double seconds = 0;
};

inline std::string self_exe() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// The start of a command line that runs the rest under `mpiexec -np NP` (e.g. mpirun_prefix(2) + cm_binary() +
// " train ..."), bounded by `timeout_s`: root allowed, oversubscribed (more ranks than the 2 cores), the vader
// BTL's single-copy mechanism off (it needs ptrace rights that containers often lack), one OpenMP thread per rank.
inline std::string mpirun_prefix(int np, int timeout_s = 300) {
  return fmt::format("OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1 "
                     "timeout {} {} --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS -np {} ",
                     timeout_s, mpiexec(), np);
}

// `timeout -k 5` ends mpirun (and with it the ranks) if the job itself hangs; rc 124 then. The vader BTL's
// single-copy mechanism needs ptrace rights that containers often lack, so it is off; one OpenMP thread
// per rank, since the ranks share few cores.
inline MpiRun mpirun(int np, const std::string& command, const std::map<std::string, std::string>& env,
                     double timeout_s) {
  std::string cmd = "OMPI_MCA_btl_vader_single_copy_mechanism=none OMP_NUM_THREADS=1 timeout -k 5 " +
                    std::to_string(static_cast<int>(timeout_s)) + " " + mpiexec() +
                    " --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS -np " + std::to_string(np);
  for (auto& [k, v] : env) cmd += " -x " + k + "='" + v + "'";
  cmd += " " + command;
  MpiRun r;
  const auto t0 = std::chrono::steady_clock::now();
  r.rc = run_command(cmd, &r.output);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// Processes (other than this one) whose command line contains `token`, read from /proc.
inline int count_processes_with(const std::string& token) {
  int count = 0;
  const std::string self = std::to_string(getpid());
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string pid = entry.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos || pid == self) continue;
    std::ifstream f(entry.path() / "cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    for (auto& c : cmdline)
      if (c == '\0') c = ' ';
    if (cmdline.find(token) != std::string::npos) ++count;
  }
  return count;
}

}  // namespace cm::test
