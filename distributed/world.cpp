// MPI world discovery (see world.h).
#include "distributed/world.h"

#include <fmt/format.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace cm {

static World g_world;
static bool g_initialised = false;

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return fmt::format("MPI error {}", code);
  return std::string(buf, len);
}

const World& init_world() {
  if (g_initialised) return g_world;
  g_initialised = true;
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  g_world.hostname = host;
  if (!launched_by_mpi()) return g_world;
  int provided = 0;
  // FUNNELED: all MPI calls come from the main thread (the trainer), which keeps MPI's locking off the
  // hot path; background threads (loader, checkpoint writer) never call MPI.
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
    throw std::runtime_error("MPI_Init_thread failed: is the MPI library the one mpirun belongs to?");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  g_world.mpi = true;
  int r = 0, s = 1;
  CM_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &r));
  CM_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &s));
  g_world.rank = r, g_world.size = s;
  // Node-local rank from a shared-memory split, never rank % GPUs-per-node: ranks may be placed in any order.
  MPI_Comm local;
  CM_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, r, MPI_INFO_NULL, &local));
  int lr = 0, ls = 1;
  CM_MPI_CHECK(MPI_Comm_rank(local, &lr));
  CM_MPI_CHECK(MPI_Comm_size(local, &ls));
  g_world.local_rank = lr, g_world.local_size = ls;
  MPI_Comm_free(&local);
  return g_world;
}

const World& world() { return g_world; }

void finalize_world() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) MPI_Finalize();
}

void abort_world(const std::string& message, int code) {
  std::fprintf(stderr, "rank %ld (%s): %s\n", static_cast<long>(g_world.rank), g_world.hostname.c_str(), message.c_str());
  std::fflush(stderr);
  if (g_world.mpi && g_world.size > 1) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace cm
