// run_guarded, abort_job and the step context (see guard.h).
#include "distributed/guard.h"

#include <mpi.h>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <thread>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include "distributed/world.h"

namespace cm::dist {
namespace {
std::atomic<int64_t> g_step{-1};
std::atomic<bool> g_aborting{false};
std::mutex g_hooks_mu;
std::map<int, std::function<void()>> g_hooks;
int g_next_hook = 1;

std::string where() {
  std::string s;
  if (World::initialized()) {
    const World& w = World::get();
    s = fmt::format("rank {}/{} ({})", w.rank, w.size, w.host);
  } else {
    s = "rank ? (before MPI start-up)";
  }
  const int64_t step = g_step.load();
  if (step >= 0) s += fmt::format(" at step {}", step);
  return s;
}
}  // namespace

void set_step(int64_t step) { g_step.store(step); }
int64_t current_step() { return g_step.load(); }

int add_abort_hook(std::function<void()> hook) {
  std::lock_guard<std::mutex> lk(g_hooks_mu);
  g_hooks[g_next_hook] = std::move(hook);
  return g_next_hook++;
}
void remove_abort_hook(int id) {
  std::lock_guard<std::mutex> lk(g_hooks_mu);
  g_hooks.erase(id);
}

void abort_job(const std::string& message, int code) {
  if (g_aborting.exchange(true)) {
    // Another thread is already taking the job down; MPI_Abort will end this process too.
    std::this_thread::sleep_for(std::chrono::seconds(60));
    std::_Exit(code);
  }
  const std::string text = fmt::format("cm: {}: {}\ncm: aborting all ranks of the job.\n", where(), message);
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
  std::fflush(stdout);
  std::map<int, std::function<void()>> hooks;
  {
    std::lock_guard<std::mutex> lk(g_hooks_mu);
    hooks = g_hooks;
  }
  for (auto& [id, hook] : hooks) {
    try {
      hook();
    } catch (...) {  // best effort: we are aborting anyway
    }
  }
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  // MPI_Abort tells mpirun / srun to kill every rank of the job; no lock: the lock may be held by the
  // collective that hangs.
  if (init && !fin) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

int run_guarded(const std::function<int()>& fn) {
  // World::init usually runs inside fn, so ask after the failure whether other ranks exist.
  const auto multi_rank = [] { return World::initialized() && World::get().size > 1; };
  try {
    return fn();
  } catch (const c10::Error& e) {
    // c10::Error::what() carries a C++ backtrace; the message without it is what a user needs.
    if (multi_rank()) abort_job(fmt::format("error: {}", e.what_without_backtrace()), 1);
    throw;
  } catch (const std::exception& e) {
    if (multi_rank()) abort_job(fmt::format("error: {}", e.what()), 1);
    throw;
  } catch (...) {
    if (multi_rank()) abort_job("error: unknown exception", 1);
    throw;
  }
}

}  // namespace cm::dist
