// Error helpers of the distributed layer (see check.h).
#include "distributed/check.h"

#include <mpi.h>
#include <atomic>
#include <fmt/format.h>

namespace cm::dist {
namespace {
std::atomic<int> g_rank{-1};
std::atomic<bool> g_serialize{false};
std::mutex g_mpi_mutex;
}  // namespace

void set_message_rank(int rank) { g_rank.store(rank); }
std::string rank_tag() {
  const int r = g_rank.load();
  return r < 0 ? std::string("rank ?") : fmt::format("rank {}", r);
}

std::unique_lock<std::mutex> mpi_serialize() {
  if (g_serialize.load(std::memory_order_relaxed)) return std::unique_lock<std::mutex>(g_mpi_mutex);
  return std::unique_lock<std::mutex>(g_mpi_mutex, std::defer_lock);
}
void set_mpi_thread_level(int provided) { g_serialize.store(provided < MPI_THREAD_MULTIPLE); }

void throw_mpi_error(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) fmt::format_to_n(text, sizeof(text) - 1, "unknown");
  throw DistError(fmt::format(
      "{}: {} failed at {}:{}: {} (MPI error code {}).\n"
      "HINT: if another rank died or aborted, its own message above names the cause; otherwise check the "
      "network / shared-memory setup of the MPI installation (ompi_info, mpirun --mca btl self,vader,tcp).",
      rank_tag(), call, file, line, text, code));
}

}  // namespace cm::dist
