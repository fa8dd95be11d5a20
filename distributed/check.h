// Checked MPI calls: the error type of the distributed layer and the macro that wraps every MPI call.
// (CUDA and NCCL checks live in nccl_communicator.cpp, the only file that includes their headers.)
//
//   CM_MPI_CHECK(MPI_Bcast(...));   // throws DistError "rank 3: MPI_Bcast(...) failed at file:line: <MPI text>"
//
// World::init installs MPI_ERRORS_RETURN on MPI_COMM_WORLD (inherited by every communicator we dup from it),
// so a failing call returns here instead of killing the job with MPI's generic message. The exception then
// reaches run_guarded (distributed/guard.h), which aborts the whole job with our message.
#pragma once
#include <mutex>
#include <stdexcept>
#include <string>

namespace cm::dist {

// Any failure of the distributed layer: MPI/NCCL/CUDA errors, ranks that disagree, a bad world layout.
struct DistError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Sets the world rank used in messages (-1, the default, before World::init).
void set_message_rank(int rank);
// "rank 3" (or "rank ?" before World::init); the prefix of every distributed error message.
std::string rank_tag();

// MPI calls from several threads at once are legal only with MPI_THREAD_MULTIPLE (what World::init asks
// for, see world.cpp). When the library provides less (SERIALIZED), every MPI call we make holds this lock;
// with MULTIPLE it returns an unlocked lock and costs nothing.
std::unique_lock<std::mutex> mpi_serialize();
void set_mpi_thread_level(int provided);

// Builds and throws the DistError of a failed MPI call (looks up MPI's error string).
[[noreturn]] void throw_mpi_error(int code, const char* call, const char* file, int line);

}  // namespace cm::dist

#define CM_MPI_CHECK(call)                                                        \
  do {                                                                            \
    const int cm_mpi_rc_ = (call);                                                \
    if (cm_mpi_rc_ != MPI_SUCCESS) ::cm::dist::throw_mpi_error(cm_mpi_rc_, #call, __FILE__, __LINE__); \
  } while (0)
