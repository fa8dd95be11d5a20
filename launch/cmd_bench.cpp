// `cm bench`: measurements that are not tests. Subcommands: allreduce (cmd_bench_allreduce.cpp),
// checkpoint (cmd_bench_checkpoint.cpp) and step (cmd_bench_step.cpp).
#include <fmt/format.h>
#include "launch/bench.h"
#include "launch/command.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm bench allreduce [OPTIONS]     gradient all-reduce: flat vs buckets, overlap with backward
       cm bench checkpoint [OPTIONS]    how long a step waits for an async checkpoint vs a blocking write
       cm bench step RECIPE [...]       the whole training step of a recipe: images/s, TFLOP/s, GPU peak fraction

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
  if (argv[0] == "step") {
    if (wants_help(rest, kBenchStepHelp)) return 0;
    return bench_step(rest);
  }
  throw std::invalid_argument(fmt::format("unknown bench '{}': allreduce, checkpoint or step (see `cm bench --help`)", argv[0]));
}

CommandRegistration reg({"bench", "measurements: gradient all-reduce (under mpirun), checkpoint writes, training steps", kHelp, run});

}  // namespace
}  // namespace cm::cli
