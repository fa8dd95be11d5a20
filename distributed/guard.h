// Failure handling: a rank that fails must take the whole job down, not leave the other ranks waiting in a
// collective forever.
//
//   int main(int argc, char** argv) {
//     return cm::dist::run_guarded([&] { ...; return 0; });   // an exception on any rank -> MPI_Abort
//   }
//   cm::dist::set_step(step);   // once per step: the step shown in abort and watchdog messages
//
// MPI_Abort makes mpirun (or srun) kill every rank, so no process is left behind; its message names the rank.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace cm::dist {

// Runs fn and returns its result. When fn throws in a job of more than one rank, prints
// "cm: rank R/W (host) at step S: error: <what>" to stderr and aborts the job (MPI_Abort, exit code 1).
// In a world of one (or before MPI starts) the exception is rethrown to the caller instead.
int run_guarded(const std::function<int()>& fn);

// Prints "cm: rank R/W (host) at step S: <message>", runs the abort hooks (e.g. ncclCommAbort) and aborts
// the job with `code`. Safe from any thread; a second concurrent caller waits for the first.
[[noreturn]] void abort_job(const std::string& message, int code = 1);

// Called before the job aborts (the NCCL communicator registers ncclCommAbort so that GPU kernels stop
// spinning). Returns an id for remove_abort_hook.
int add_abort_hook(std::function<void()> hook);
void remove_abort_hook(int id);

// The training step the process is in, for messages (-1 = not in a step).
void set_step(int64_t step);
int64_t current_step();

}  // namespace cm::dist
