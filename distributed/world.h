// Who trains: the MPI world (rank, size, node-local rank via MPI_Comm_split_type), started only when a
// launcher (mpirun, srun) is detected so a plain `cm train` stays a single process; and a checked-call
// macro for MPI that names the call, file, line and rank.
#pragma once
#include <cstdint>
#include <string>

namespace cm {

struct World {
  int64_t rank = 0, size = 1;
  int64_t local_rank = 0, local_size = 1;  // among the ranks on this node (shared-memory split)
  bool mpi = false;                        // MPI was initialised (launched by mpirun/srun)
  std::string hostname;
};

// True when the environment says a launcher started us (OMPI_COMM_WORLD_SIZE, PMIX_RANK, PMI_SIZE).
bool launched_by_mpi();
// Initialises MPI once (MPI_THREAD_FUNNELED: only the main thread calls MPI) when launched by mpirun/srun;
// otherwise returns the single-process world. Safe to call more than once.
const World& init_world();
const World& world();
void finalize_world();
// Ends every rank of the job: prints "rank R (host): MESSAGE" to stderr and calls MPI_Abort, so that a
// failing rank never leaves the others waiting in a collective. Without MPI it just exits.
[[noreturn]] void abort_world(const std::string& message, int code = 1);

std::string mpi_error_string(int code);

}  // namespace cm

#define CM_MPI_CHECK(call)                                                                                  \
  do {                                                                                                      \
    int cm_mpi_rc_ = (call);                                                                                \
    if (cm_mpi_rc_ != MPI_SUCCESS)                                                                          \
      throw std::runtime_error(fmt::format("{} failed at {}:{} on rank {}: {}", #call, __FILE__, __LINE__, \
                                           ::cm::world().rank, ::cm::mpi_error_string(cm_mpi_rc_)));        \
  } while (0)
