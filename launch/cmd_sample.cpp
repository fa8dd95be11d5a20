// `cm sample`: one-step or multistep samples from a trained model's weights.
#include <filesystem>
#include <fmt/format.h>
#include <torch/torch.h>
#include "core/image.h"
#include "core/safetensors.h"
#include "core/sampler.h"
#include "launch/command.h"
#include "recipes/objectives.h"
#include "recipes/recipe.h"
#include "recipes/trainer.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm sample RECIPE --weights FILE [OVERRIDES...] [--count N] [--ts 0,8] [--grid N]
                 [--seed S] [--out DIR]

Sample from a model trained with RECIPE using the weights in FILE (model.safetensors or an
ema_<rate>.safetensors of a run directory). Consistency models: --ts gives the indices of the noise
levels into a --grid-point Karras grid counted from sigma_max (default: the recipe's sample.ts; 0 alone =
one step). EDM models: Heun with sample.edm_steps. Writes DIR/samples.png and DIR/samples.safetensors
(float samples, and uint8 NHWC images for image data).)";

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {});
  args.check_known({"weights", "count", "ts", "grid", "seed", "out"});
  auto plain = args.plain();
  if (plain.size() != 1) throw std::invalid_argument("expected exactly one RECIPE (see `cm sample --help`)");
  auto weights = args.opt("weights");
  if (!weights) throw std::invalid_argument("--weights FILE is required (a model.safetensors or ema_<rate>.safetensors)");
  Recipe r = Recipe::load(plain[0], args.overrides());
  r.sample.ts = args.int_list_or("ts", r.sample.ts);
  r.sample.grid = args.int_or("grid", r.sample.grid);
  const int64_t count = args.int_or("count", r.sample.count);
  const uint64_t seed = static_cast<uint64_t>(args.int_or("seed", 0));
  const std::string out = args.opt_or("out", ".");
  auto data = build_data(r, 0, 1);
  const ModelShape shape = data->shape();
  auto net = build_network(r, shape);
  load_network_weights(*net, *weights);
  const torch::Device dev = torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  net->to(dev);
  auto p = preconditioning(r);
  auto sigmas = recipe_sample_sigmas(r);
  fmt::print("sampling {} with {} ({}): sigmas [{}]\n", count, *weights, p.kind == Preconditioning::Edm ? "EDM Heun" : "consistency",
             fmt::join(sigmas, ", "));
  auto x = sample_model(r, *net, p, count, sigmas, seed, dev, shape).cpu();
  std::filesystem::create_directories(out);
  NamedTensors t = {{"samples", x}};
  torch::Tensor img;
  if (shape.resolution > 0) {
    t.emplace_back("images_nhwc_uint8", to_uint8(x).permute({0, 2, 3, 1}).contiguous());
    img = image_grid(x, static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(count)))));
  } else {
    img = scatter_plot(torch::zeros({0, 2}), x);
  }
  save_safetensors(out + "/samples.safetensors", t);
  write_png(out + "/samples.png", img);
  fmt::print("wrote {}/samples.png and {}/samples.safetensors\n", out, out);
  return 0;
}

CommandRegistration reg({"sample", "sample from trained weights (one step or multistep)", kHelp, run});

}  // namespace
}  // namespace cm::cli
