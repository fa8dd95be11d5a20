// Command-line options shared by the commands that run a trained model (`cm sample`, `cm edit`,
// `cm ts-search`): --weights/--ema, the noise levels (--ts/--grid or --sigmas) and --labels.
#pragma once
#include <c10/core/Device.h>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include "launch/command.h"

namespace cm {
struct NetworkImpl;
struct Recipe;
struct SamplingOptions;
}  // namespace cm

namespace cm::dist {
class Communicator;
struct World;
}

namespace cm::cli {

// Runs fn(comm, rank, device) in this process alone (comm null, the first GPU if any, else the CPU), or,
// when launched by mpirun/srun, on every rank of the world with a communicator (its device: the rank's GPU
// or the CPU per `device` = auto | cpu | cuda); a rank that throws ends the whole job naming itself.
// One process's device: the first GPU when this LibTorch sees one (and `device` is not "cpu"), else the CPU.
c10::Device single_process_device(const std::string& device = "auto");
using WorldFn = std::function<int(dist::Communicator* comm, int rank, c10::Device device)>;
int run_on_world(const std::string& device, double watchdog_s, const WorldFn& fn);
// The entry both forms share (also `cm train`'s): fn(nullptr, nullptr) in a plain process; under
// mpirun/srun fn(world, its communicator) inside dist::run_guarded, MPI finalized after fn returns.
using WorldJobFn = std::function<int(const dist::World* world, std::shared_ptr<dist::Communicator> comm)>;
int run_world_job(const std::string& device, double watchdog_s, const WorldJobFn& fn);

// "80,0.8" -> {80, 0.8}; throws naming `what` for anything else.
std::vector<double> parse_doubles(const std::string& s, const std::string& what);

// --weights PATH [--ema RATE]: a weights file (.safetensors / .pt), or a checkpoint or run directory with
// --ema RATE (its newest committed checkpoint's EMA). Clear errors for every other combination.
void load_weights_arg(NetworkImpl& net, const std::string& path, const std::optional<std::string>& ema);

// The consistency noise levels: --sigmas (must start at sigma_max, all within the recipe's range) or
// --ts indices into a --grid-point Karras grid (default: the recipe's sample.ts and sample.grid).
std::vector<double> noise_levels_arg(const Args& args, const Recipe& r);

// Whether denoised estimates are clipped to [-1, 1] (images): the recipe's sample.clip, off with --no-clip.
bool clip_arg(const Args& args, const Recipe& r);

// --labels random|balanced|K into `o` (labels, fixed_class).
void labels_arg(const Args& args, SamplingOptions& o);

}  // namespace cm::cli
