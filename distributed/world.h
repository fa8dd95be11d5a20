// World discovery: MPI start-up, rank / size / node-local rank, the device this rank drives, and small
// host-side exchanges (strings, 64-bit values) for cross-rank checks. Works without mpirun (a world of one).
//
//   const auto& w = cm::dist::World::init({.device = "auto", .timeout_s = 600});
//   w.rank, w.size, w.local_rank, w.device ...
//   ... create communicators, train ...          (destroy communicators first)
//   cm::dist::World::finalize();
//
// The node-local rank comes from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED), never rank % gpus_per_node:
// launchers may place ranks round-robin across nodes, and nodes may hold different numbers of ranks.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include <torch/types.h>

namespace cm::dist {

struct WorldOptions {
  // "auto": cuda:<local rank> when this LibTorch has CUDA and the node has GPUs, else cpu. "cpu", "cuda".
  std::string device = "auto";
  // Watchdog (distributed/watchdog.h): a collective running longer than this aborts the job. 0 = off.
  // `cm train` and the other commands set it from train.watchdog_s.
  double timeout_s = 600;
  // log0() prints on every rank (prefixed with the rank) instead of rank 0 only.
  bool log_all_ranks = false;
};

struct World {
  int rank = 0;
  int size = 1;
  int local_rank = 0;  // rank among the processes of this node
  int local_size = 1;  // processes on this node
  int nodes = 1;
  std::string host;
  torch::Device device = torch::kCPU;
  bool log_all_ranks = false;
  int mpi_thread_level = 0;  // what MPI_Init_thread provided

  bool is_root() const { return rank == 0; }

  // Initializes MPI (once per process; later calls return the same world) and discovers the layout.
  static const World& init(const WorldOptions& options = {});
  static bool initialized();
  static const World& get();  // throws DistError before init()
  // Stops the watchdog and finalizes MPI if init() started it. Destroy communicators before.
  static void finalize();
};

// True when the environment says a launcher started this process (mpirun: OMPI_COMM_WORLD_SIZE; srun and
// other PMI launchers: PMIX_RANK, PMI_SIZE, PMI_RANK). `cm train` starts MPI only then, so that a plain
// `cm train` stays an ordinary single process (an MPI singleton start-up can be slow or fail in containers).
bool launched_by_mpi();

// The device rule, separated for tests. `visible_gpus` = torch::cuda::device_count() on this rank;
// `same_visibility` = all ranks of the node see the same CUDA_VISIBLE_DEVICES (then rank i takes GPU i and
// the node needs local_size GPUs); otherwise the launcher gave each rank its own GPUs and it takes GPU 0.
// Throws DistError with what to do when the node has too few GPUs.
torch::Device pick_device(const std::string& request, bool cuda_built, int local_rank, int local_size,
                          int visible_gpus, bool same_visibility, const std::string& host);

// Host-side collectives on a control communicator of their own (main thread only; they never interleave
// with the communicators' collectives). Entry i comes from rank i.
std::vector<std::string> all_gather_strings(const std::string& mine);
std::vector<uint64_t> all_gather_u64(uint64_t mine);
// rank 0's string on every rank.
std::string broadcast_string(const std::string& from_root);

}  // namespace cm::dist
