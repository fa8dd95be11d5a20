// Training objectives: EDM (denoising score matching, to make teachers), and the consistency family
// CD / CT / iCT (spec sections 3-5), composed from the method's row of recipes/methods.h. The contract
// they implement is core/objective.h; an objective owns the student network and its target theta-
// (whose parameters the run's EmaSet updates, core/ema.h).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <torch/types.h>
#include "core/parameterization.h"
#include "core/rng.h"
#include "core/io/safetensors.h"
#include "core/objective.h"
#include "recipes/recipe.h"

namespace cm {

// Everything an objective may need besides the recipe: the data's exact denoiser (toys, DataSource::
// exact_denoiser) for CD with teacher = "exact", and a factory for networks of the recipe's architecture.
struct ObjectiveDeps {
  ModelShape shape;
  DenoiserFn exact_denoiser;  // may be empty
  // Builds a network of the recipe's architecture; empty = build_network(recipe, shape). Lets a caller
  // supply its own network (tests use a probe that records dropout masks).
  std::function<NetworkPtr()> network_factory;
};

std::unique_ptr<Objective> make_objective(const Recipe& r, const ObjectiveDeps& deps);

// Loads a safetensors file or a PyTorch .pt state dict into the network (names and shapes must match
// exactly; the error lists every missing, unexpected and mis-shaped tensor). See core/weights.h.
void load_network_weights(torch::nn::Module& net, const std::string& path);
// The network's parameters and buffers by name, in PyTorch's state-dict order.
NamedTensors network_state(torch::nn::Module& net);

}  // namespace cm
