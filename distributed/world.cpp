// World discovery and host-side exchanges (see world.h); also the log helpers of log.h.
#include "distributed/world.h"

#include <mpi.h>
#include <cstdio>
#include <cstdlib>
#include <fmt/format.h>
#include <torch/cuda.h>
#include "distributed/check.h"
#include "distributed/log.h"
#include "distributed/watchdog.h"

namespace cm::dist {
namespace {

struct State {
  World world;
  bool initialized = false;
  bool finalized = false;
  bool own_mpi = false;          // we called MPI_Init, so we call MPI_Finalize
  MPI_Comm control = MPI_COMM_NULL;
};
State& state() {
  static State s;
  return s;
}

MPI_Comm control_comm() {
  auto& s = state();
  if (!s.initialized) throw DistError("distributed: World::init() must be called before any cross-rank exchange");
  return s.control;
}

std::vector<std::string> gather_strings(MPI_Comm comm, const std::string& mine) {
  auto lock = mpi_serialize();
  int size = 0;
  CM_MPI_CHECK(MPI_Comm_size(comm, &size));
  int len = static_cast<int>(mine.size());
  std::vector<int> lens(size), offs(size);
  CM_MPI_CHECK(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, comm));
  int total = 0;
  for (int i = 0; i < size; ++i) {
    offs[i] = total;
    total += lens[i];
  }
  std::string all(static_cast<size_t>(total), '\0');
  CM_MPI_CHECK(MPI_Allgatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(), offs.data(), MPI_CHAR, comm));
  std::vector<std::string> out(size);
  for (int i = 0; i < size; ++i) out[i] = all.substr(offs[i], lens[i]);
  return out;
}

}  // namespace

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

torch::Device pick_device(const std::string& request, bool cuda_built, int local_rank, int local_size,
                          int visible_gpus, bool same_visibility, const std::string& host) {
  if (request == "cpu") return torch::kCPU;
  if (request != "auto" && request != "cuda")
    throw DistError(fmt::format("distributed: device '{}' is not one of auto, cpu, cuda", request));
  if (visible_gpus == 0) {
    if (request == "auto") return torch::kCPU;
    throw DistError(fmt::format(
        "{} on {}: device 'cuda' requested but {}. Run on a GPU node with a CUDA build of LibTorch, or set "
        "device=cpu.", rank_tag(), host, cuda_built ? "no GPU is visible (check CUDA_VISIBLE_DEVICES)"
                                                     : "this LibTorch was built without CUDA"));
  }
  if (!same_visibility) return torch::Device(torch::kCUDA, 0);  // the launcher isolated one GPU set per rank
  if (visible_gpus < local_size)
    throw DistError(fmt::format(
        "{} on {}: {} ranks were started on this node but it has only {} visible GPU(s); each rank needs its own "
        "GPU. Start at most {} ranks per node (mpirun --map-by ppr:{}:node, srun --ntasks-per-node={}) or set "
        "device=cpu.", rank_tag(), host, local_size, visible_gpus, visible_gpus, visible_gpus, visible_gpus));
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
}

namespace {

// MPI_Init_thread unless the host program already initialized MPI; returns the thread level provided.
int init_mpi(State& s) {
  int already = 0, provided = 0;
  MPI_Initialized(&already);
  if (!already) {
    // MPI_THREAD_MULTIPLE, because three threads of a rank make MPI calls:
    //  1. the MpiCommunicator's communication thread runs the bucket all-reduces during backward (that is
    //     how the CPU path overlaps communication with compute, see mpi_communicator.h);
    //  2. the main thread meanwhile uses the control communicator (shape checks, EMA checksums, NCCL set-up);
    //  3. the watchdog thread calls MPI_Abort while another thread is blocked inside a collective that will
    //     never finish; only MULTIPLE makes that call legal.
    // FUNNELED would force every call through the main thread and rule out (1) and (3). Open MPI 4 and MPICH
    // provide MULTIPLE; if a library gives only SERIALIZED we still run, holding one lock around each call.
    const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
    if (rc != MPI_SUCCESS) throw DistError("distributed: MPI_Init_thread failed; is the MPI installation usable?");
    s.own_mpi = true;
  } else {
    MPI_Query_thread(&provided);
  }
  if (provided < MPI_THREAD_SERIALIZED)
    throw DistError(fmt::format(
        "distributed: MPI provides thread level {} but at least MPI_THREAD_SERIALIZED is needed (the "
        "communication thread calls MPI). Use an MPI built with thread support (Open MPI >= 3, MPICH).", provided));
  set_mpi_thread_level(provided);
  return provided;
}

// Rank, size, host, node-local rank and the number of nodes; duplicates the control communicator.
// Returns the node-local communicator (the caller frees it).
MPI_Comm discover_layout(State& s) {
  World& w = s.world;
  CM_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  CM_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &w.rank));
  CM_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &w.size));
  set_message_rank(w.rank);
  CM_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &s.control));

  char name[MPI_MAX_PROCESSOR_NAME] = {0};
  int name_len = 0;
  CM_MPI_CHECK(MPI_Get_processor_name(name, &name_len));
  w.host.assign(name, static_cast<size_t>(name_len));

  MPI_Comm local = MPI_COMM_NULL;
  CM_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w.rank, MPI_INFO_NULL, &local));
  CM_MPI_CHECK(MPI_Comm_rank(local, &w.local_rank));
  CM_MPI_CHECK(MPI_Comm_size(local, &w.local_size));
  int leader = w.local_rank == 0 ? 1 : 0;
  CM_MPI_CHECK(MPI_Allreduce(&leader, &w.nodes, 1, MPI_INT, MPI_SUM, s.control));
  return local;
}

// The layout, one line per rank, printed by rank 0 in rank order: where every rank runs and which device
// it drives (CM_SHOW_LAYOUT=0 leaves it out). On a node without GPUs the line also says what a GPU node
// would give this rank under the same launch (pick_device's rule), so a CPU trial of a job script, or
// `cm plan RECIPE --layout` under srun/mpirun, shows the rank-to-GPU mapping before any GPU hour is spent.
void print_layout(const State& s, int gpus, bool same_visibility, const char* vis) {
  const World& w = s.world;
  const char* show = std::getenv("CM_SHOW_LAYOUT");
  if (w.size <= 1 || (show && std::string(show) == "0")) return;
  std::string line = fmt::format("rank {}/{} host {} local {}/{} device {}", w.rank, w.size, w.host, w.local_rank,
                                 w.local_size, w.device.str());
  if (gpus == 0) line += fmt::format(" (on a GPU node: cuda:{})", same_visibility ? w.local_rank : 0);
  if (vis) line += fmt::format(" CUDA_VISIBLE_DEVICES={}", vis);
  const auto lines = gather_strings(s.control, line);
  if (w.rank == 0) {
    std::string text = fmt::format("world: {} ranks on {} node(s):\n", w.size, w.nodes);
    for (auto& l : lines) text += "  " + l + "\n";
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  }
}

}  // namespace

const World& World::init(const WorldOptions& options) {
  auto& s = state();
  if (s.initialized) return s.world;
  if (s.finalized) throw DistError("distributed: World::init() after World::finalize(); MPI cannot restart");

  World& w = s.world;
  w.mpi_thread_level = init_mpi(s);
  MPI_Comm local = discover_layout(s);

  // Device: ranks of a node that see the same CUDA_VISIBLE_DEVICES share the node's GPUs (rank i -> GPU i).
  const char* vis = std::getenv("CUDA_VISIBLE_DEVICES");
  const auto visibility = gather_strings(local, vis ? std::string(vis) : std::string("<unset>"));
  bool same = true;
  for (auto& v : visibility) same = same && v == visibility[0];
  CM_MPI_CHECK(MPI_Comm_free(&local));
  const int gpus = static_cast<int>(torch::cuda::device_count());
  w.device = pick_device(options.device, gpus > 0, w.local_rank, w.local_size, gpus, same, w.host);
  w.log_all_ranks = options.log_all_ranks;
  s.initialized = true;

  print_layout(s, gpus, same, vis);
  Watchdog::get().start(options.timeout_s);
  return w;
}

bool World::initialized() { return state().initialized; }

const World& World::get() {
  if (!state().initialized) throw DistError("distributed: World::get() before World::init()");
  return state().world;
}

void World::finalize() {
  auto& s = state();
  if (!s.initialized) return;
  Watchdog::get().stop();
  if (s.control != MPI_COMM_NULL) MPI_Comm_free(&s.control);
  int fin = 0;
  MPI_Finalized(&fin);
  if (s.own_mpi && !fin) MPI_Finalize();
  s.initialized = false;
  s.finalized = true;
}

std::vector<std::string> all_gather_strings(const std::string& mine) { return gather_strings(control_comm(), mine); }

std::vector<uint64_t> all_gather_u64(uint64_t mine) {
  MPI_Comm comm = control_comm();
  auto lock = mpi_serialize();
  std::vector<uint64_t> out(static_cast<size_t>(World::get().size));
  CM_MPI_CHECK(MPI_Allgather(&mine, 1, MPI_UINT64_T, out.data(), 1, MPI_UINT64_T, comm));
  return out;
}

std::string broadcast_string(const std::string& from_root) {
  MPI_Comm comm = control_comm();
  auto lock = mpi_serialize();
  uint64_t len = from_root.size();
  CM_MPI_CHECK(MPI_Bcast(&len, 1, MPI_UINT64_T, 0, comm));
  std::string out = World::get().rank == 0 ? from_root : std::string(len, '\0');
  CM_MPI_CHECK(MPI_Bcast(out.data(), static_cast<int>(len), MPI_CHAR, 0, comm));
  return out;
}

void log_line(const std::string& line, bool every_rank) {
  std::string text;
  if (!World::initialized()) {
    text = line;
  } else {
    const World& w = World::get();
    if (!every_rank && !w.log_all_ranks && w.rank != 0) return;
    text = w.size > 1 ? fmt::format("[rank {}/{}] {}", w.rank, w.size, line) : line;
  }
  text.push_back('\n');
  std::fwrite(text.data(), 1, text.size(), stdout);  // one write per line: lines of ranks do not interleave
  std::fflush(stdout);
}

}  // namespace cm::dist
