// Options shared by the commands that run a trained model (see model_args.h).
#include "launch/model_args.h"

#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <torch/torch.h>
#include "core/compat.h"          // cuda_available
#include "core/sampler.h"        // ts_to_sigmas
#include "core/weights.h"        // load_weights
#include "distributed/communicator.h"  // Communicator::create
#include "distributed/guard.h"         // run_guarded: a failing rank aborts the job
#include "distributed/world.h"         // World::init under mpirun/srun
#include "recipes/checkpoint.h"  // find_checkpoint, read_checkpoint_tensors, ema_file_name
#include "recipes/objectives.h"  // load_network_weights
#include "recipes/recipe.h"
#include "recipes/sampling.h"

namespace cm::cli {

c10::Device single_process_device(const std::string& device) {
  // "auto" tolerates a machine without a GPU; "cuda" without one is an error naming why.
  const int gpus = compat::cuda_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
  return dist::pick_device(device, compat::cuda_available(), 0, 1, gpus, true, "this host");
}

int run_world_job(const std::string& device, double watchdog_s, const WorldJobFn& fn) {
  if (!dist::launched_by_mpi()) return fn(nullptr, nullptr);
  return dist::run_guarded([&] {
    dist::WorldOptions wo;
    wo.device = device;
    wo.timeout_s = watchdog_s;  // the watchdog: a collective that takes longer aborts the job
    const dist::World& w = dist::World::init(wo);
    int rc = 0;
    {
      auto comm = dist::Communicator::create(w, w.device);
      rc = fn(&w, std::move(comm));
    }  // the job holds the only reference to the communicator: both go before MPI does
    dist::World::finalize();
    return rc;
  });
}

int run_on_world(const std::string& device, double watchdog_s, const WorldFn& fn) {
  return run_world_job(device, watchdog_s, [&](const dist::World* w, std::shared_ptr<dist::Communicator> comm) {
    if (!w) return fn(nullptr, 0, single_process_device(device));
    return fn(comm->size() > 1 ? comm.get() : nullptr, w->rank, w->device);
  });
}

std::vector<double> parse_doubles(const std::string& s, const std::string& what) {
  std::vector<double> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    size_t pos = 0;
    double v = 0;
    try {
      v = std::stod(item, &pos);
    } catch (...) {
      pos = std::string::npos;
    }
    if (item.empty() || pos != item.size()) throw std::invalid_argument(fmt::format("{} expects numbers separated by commas, got '{}'", what, s));
    out.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

void load_weights_arg(NetworkImpl& net, const std::string& path, const std::optional<std::string>& ema) {
  if (!std::filesystem::is_directory(path)) {
    if (ema) throw std::invalid_argument("--ema RATE selects an EMA of a checkpoint or run directory; --weights is a file");
    load_network_weights(net, path);
    return;
  }
  if (!ema) throw std::invalid_argument(fmt::format("--weights {} is a directory: add --ema RATE to pick a sampling EMA of its newest checkpoint", path));
  std::vector<std::string> skipped;
  CheckpointInfo c = find_checkpoint(path, &skipped);
  for (auto& s : skipped) fmt::print(stderr, "warning: skipping a checkpoint that does not verify: {}\n", s);
  const double rate = parse_doubles(*ema, "--ema").at(0);
  const std::string file = ema_file_name(rate);
  if (!c.has(file)) throw std::invalid_argument(fmt::format("{} has no sampling EMA {} ({})", c.path, *ema, file));
  load_weights(net, read_checkpoint_tensors(c, file).tensors, c.path + "/" + file);
}

std::vector<double> noise_levels_arg(const Args& args, const Recipe& r) {
  if (auto s = args.opt("sigmas")) {
    if (args.opt("ts")) throw std::invalid_argument("give either --ts (grid indices) or --sigmas, not both");
    std::vector<double> sigmas = parse_doubles(*s, "--sigmas");
    if (std::abs(sigmas[0] - r.method.range.sigma_max) > 1e-9 * r.method.range.sigma_max)
      throw std::invalid_argument(fmt::format("--sigmas must start at sigma_max = {} (one-step sampling starts there), got {}",
                                              r.method.range.sigma_max, sigmas[0]));
    for (double v : sigmas)
      if (v < r.method.range.sigma_min || v > r.method.range.sigma_max)
        throw std::invalid_argument(fmt::format("--sigmas: {} is outside [sigma_min, sigma_max] = [{}, {}]", v,
                                                r.method.range.sigma_min, r.method.range.sigma_max));
    return sigmas;
  }
  // The recipe's sample.sigmas when it names its levels that way and the command line gives no --ts/--grid.
  if (!r.sample.sigmas.empty() && !args.opt("ts") && !args.opt("grid")) return r.sample.sigmas;
  return ts_to_sigmas(args.int_list_or("ts", r.sample.ts), args.int_or("grid", r.sample.grid), r.method.range);
}

bool clip_arg(const Args& args, const Recipe& r) { return r.sample.clip && !args.flag("no-clip"); }

void labels_arg(const Args& args, SamplingOptions& o) {
  const std::string labels = args.opt_or("labels", "random");
  if (labels == "random") o.labels = LabelMode::Random;
  else if (labels == "balanced") o.labels = LabelMode::Balanced;
  else {
    o.labels = LabelMode::Fixed;
    size_t pos = 0;
    try {
      o.fixed_class = std::stoll(labels, &pos);
    } catch (...) {
      pos = std::string::npos;
    }
    if (pos != labels.size()) throw std::invalid_argument(fmt::format("--labels expects random, balanced or a class number, got '{}'", labels));
  }
}

}  // namespace cm::cli
