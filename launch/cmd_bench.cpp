// `cm bench`: measurements that are not tests. Subcommands: allreduce (cmd_bench_allreduce.cpp) and
// checkpoint (cmd_bench_checkpoint.cpp).
#include <fmt/format.h>
#include "launch/bench.h"
#include "launch/command.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm bench allreduce [OPTIONS]     gradient all-reduce: flat vs buckets, overlap with backward
       cm bench checkpoint [OPTIONS]    how long a step waits for an async checkpoint vs a blocking write

`cm bench SUBCOMMAND --help` describes each.)";

int run(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h") {
    fmt::print("{}\n", kHelp);
    return 0;
  }
  const std::vector<std::string> rest(argv.begin() + 1, argv.end());
  if (argv[0] == "allreduce") {
    if (wants_help(rest, kBenchAllreduceHelp)) return 0;
    return bench_allreduce(rest);
  }
  if (argv[0] == "checkpoint") {
    if (wants_help(rest, kBenchCheckpointHelp)) return 0;
    return bench_checkpoint(rest);
  }
  throw std::invalid_argument(fmt::format("unknown bench '{}': allreduce or checkpoint (see `cm bench --help`)", argv[0]));
}

CommandRegistration reg({"bench", "measurements: gradient all-reduce (under mpirun), checkpoint writes", kHelp, run});

}  // namespace
}  // namespace cm::cli
