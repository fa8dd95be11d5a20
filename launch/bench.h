// `cm bench` subcommands: measurements that are not tests (cmd_bench.cpp dispatches).
#pragma once
#include <string>
#include <vector>

namespace cm::cli {

extern const char* const kBenchAllreduceHelp;
int bench_allreduce(const std::vector<std::string>& argv);  // argv after "allreduce"; run under mpirun

extern const char* const kBenchCheckpointHelp;
int bench_checkpoint(const std::vector<std::string>& argv);  // argv after "checkpoint"

extern const char* const kBenchStepHelp;
int bench_step(const std::vector<std::string>& argv);  // argv after "step"; also under mpirun

}  // namespace cm::cli
