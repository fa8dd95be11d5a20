// `cm model`: look at a recipe's network without training it.
//   summary  parameters, FLOPs per forward, training-memory estimate per GPU
//   check    load a weights file (.safetensors or a PyTorch .pt state dict) into the recipe's network
//   convert  turn a PyTorch .pt state dict into safetensors
//
// FLOPs and memory come from launch/model_stats.h (a shape-only pass counting operators).
#include <fmt/format.h>

#include <cmath>
#include <set>
#include <torch/torch.h>
#include "core/config.h"
#include "core/network.h"
#include "core/nets/layers.h"
#include "core/io/safetensors.h"
#include "core/io/torch_import.h"
#include "core/weights.h"
#include "launch/command.h"
#include "launch/model_stats.h"

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm model summary RECIPE [OVERRIDES...] [--batch-per-gpu B] [--emas N] [--fp16] [--json]
       cm model check RECIPE WEIGHTS [OVERRIDES...] [--prefix P]
       cm model convert IN.pt OUT.safetensors [--select KEY]

summary  Build the recipe's network (model table; image shape from dataset.resolution, dataset.channels,
         dataset.num_classes) and print its parameter count, the FLOPs of one forward pass per image
         (2 x multiply-accumulates of convolutions, linear layers and attention matmuls), and an estimate
         of the training memory per GPU at a per-GPU batch B (default 32): fp32 weights, gradients, two
         optimizer moments (Adam/RAdam), N extra weight copies (--emas, default 1: the target network; add
         the sampling EMAs and, for CD, the teacher), and the activations kept for the backward pass
         (estimated as the sum of intermediate outputs; --fp16: of a pass under autocast, bf16 / fp16 training,
         each output at the width autocast gives it: 2 bytes for convolutions and matmuls, 4 where it keeps fp32).
check    Load WEIGHTS into the recipe's network; on a mismatch print every missing, unexpected and
         mis-shaped name. --prefix P uses only the entries under P (e.g. "model." for {"model": state_dict}).
convert  Write the tensors of a torch.save file (zip format) as safetensors; --select KEY keeps the entries
         under KEY (e.g. "model") with the prefix removed.)";

std::string gb(double bytes) { return fmt::format("{:.2f} GB", bytes / 1e9); }

int run_summary(const Args& args, const std::vector<std::string>& plain) {
  if (plain.size() != 1) throw std::invalid_argument("expected: cm model summary RECIPE [OVERRIDES...] (see --help)");
  const int64_t batch = args.int_or("batch-per-gpu", 32);
  const int64_t emas = args.int_or("emas", 1);
  if (batch < 1 || emas < 0) throw std::invalid_argument("--batch-per-gpu must be >= 1 and --emas >= 0");
  const Config cfg = Config::compose(plain[0], args.overrides());
  const ModelStats s = measure_model(cfg, args.flag("fp16"));
  const MemoryEstimate mem = estimate_memory(s, batch, emas);
  const double macs = s.ops.macs();
  const double act_bytes = mem.activations_per_image;
  const double w = mem.weights;
  const double mem_weights = mem.weights, mem_grads = mem.gradients, mem_opt = mem.optimizer, mem_emas = mem.copies,
               mem_act = mem.activations, total = mem.total;
  const std::string input = s.shape.resolution > 0
                                ? fmt::format("{} x {} x {}", s.shape.channels, s.shape.resolution, s.shape.resolution)
                                : fmt::format("{}-d vectors", s.shape.channels);

  if (args.flag("json")) {
    fmt::print("{{\"recipe\": \"{}\", \"arch\": \"{}\", \"channels\": {}, \"resolution\": {}, \"num_classes\": {}, "
               "\"parameters\": {}, \"buffers\": {}, \"flops_per_image\": {:.0f}, \"flops_conv\": {:.0f}, "
               "\"flops_linear\": {:.0f}, \"flops_attention\": {:.0f}, \"activation_bytes_per_image\": {:.0f}, "
               "\"batch_per_gpu\": {}, \"emas\": {}, \"memory_weights\": {:.0f}, \"memory_gradients\": {:.0f}, "
               "\"memory_optimizer\": {:.0f}, \"memory_emas\": {:.0f}, \"memory_activations\": {:.0f}, "
               "\"memory_total\": {:.0f}}}\n",
               cfg.recipe_path(), s.arch, s.shape.channels, s.shape.resolution, s.shape.num_classes, s.parameters,
               s.buffers, 2 * macs, 2 * s.ops.conv_macs, 2 * s.ops.linear_macs, 2 * s.ops.attention_macs, act_bytes,
               batch, emas, mem_weights, mem_grads, mem_opt, mem_emas, mem_act, total);
    return 0;
  }
  fmt::print("recipe:       {}\n", cfg.recipe_path());
  fmt::print("network:      {} on {}{}\n", s.arch, input,
             s.shape.num_classes ? fmt::format(", {} classes", s.shape.num_classes) : std::string());
  fmt::print("parameters:   {} ({} fp32){}\n", with_commas(s.parameters), gb(w),
             s.buffers ? fmt::format(", plus {} buffer values", with_commas(s.buffers)) : std::string());
  fmt::print("forward:      {:.2f} GFLOPs per image (convolutions {:.2f}, linear {:.3f}, attention {:.2f}); "
             "FLOPs = 2 x multiply-accumulates\n",
             2 * macs / 1e9, 2 * s.ops.conv_macs / 1e9, 2 * s.ops.linear_macs / 1e9, 2 * s.ops.attention_macs / 1e9);
  fmt::print("training:     about 3 forwards per image for the student (forward + backward), plus one per target or "
             "teacher evaluation\n");
  if (!s.ops.uncounted.empty())
    fmt::print("note:         not counted (per-image share unknown): {}\n", fmt::join(s.ops.uncounted, ", "));
  fmt::print("memory per GPU at batch {} (estimate):\n", batch);
  fmt::print("  weights {}, gradients {}, optimizer moments {}, {} weight copies (target/EMAs) {}\n", gb(mem_weights),
             gb(mem_grads), gb(mem_opt), emas, gb(mem_emas));
  fmt::print("  activations {} x {:.1f} MB{} = {}\n", batch, act_bytes / 1e6, args.flag("fp16") ? " (fp16)" : "",
             gb(mem_act));
  fmt::print("  total {}\n", gb(total));
  return 0;
}

// ---------------------------------------------------------------------------------------------------
// check / convert

int run_check(const Args& args, const std::vector<std::string>& plain) {
  if (plain.size() != 2) throw std::invalid_argument("expected: cm model check RECIPE WEIGHTS [OVERRIDES...]");
  const Config cfg = Config::compose(plain[0], args.overrides());
  std::string arch;
  auto net = build_model(cfg, model_shape(cfg), &arch);
  LoadWeightsOptions opt;
  opt.prefix = args.opt_or("prefix", "");
  try {
    load_weights_file(*net, plain[1], opt);
  } catch (const WeightsMismatchError& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 1;
  }
  fmt::print("{}: all {} tensors of the {} network loaded ({} parameters)\n", plain[1], state_dict(*net).size(), arch,
             with_commas(count_parameters(*net)));
  return 0;
}

int run_convert(const Args& args, const std::vector<std::string>& plain) {
  if (plain.size() != 2) throw std::invalid_argument("expected: cm model convert IN.pt OUT.safetensors [--select KEY]");
  const std::string select = args.opt_or("select", "");
  TorchImport imp = import_torch_file(plain[0]);
  NamedTensors tensors = select.empty() ? std::move(imp.tensors) : load_torch_state_dict(plain[0], select);
  save_safetensors(plain[1], tensors, {{"source", plain[0]}, {"select", select}});
  fmt::print("{}: wrote {} tensors from {}\n", plain[1], tensors.size(), plain[0]);
  if (!imp.skipped.empty() && select.empty())
    fmt::print("skipped non-tensor entries: {}\n", fmt::join(imp.skipped, ", "));
  return 0;
}

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"json", "fp16"});
  args.check_known({"json", "fp16", "batch-per-gpu", "emas", "prefix", "select"});
  auto plain = args.plain();
  if (plain.empty()) throw std::invalid_argument("expected a subcommand: summary, check or convert (see `cm model --help`)");
  const std::string sub = plain[0];
  plain.erase(plain.begin());
  if (sub == "summary") return run_summary(args, plain);
  if (sub == "check") return run_check(args, plain);
  if (sub == "convert") return run_convert(args, plain);
  throw std::invalid_argument(fmt::format("unknown subcommand '{}' (summary, check or convert)", sub));
}

CommandRegistration reg({"model", "network summary (parameters, FLOPs, memory), weight checks and .pt conversion", kHelp,
                         run});

}  // namespace
}  // namespace cm::cli
