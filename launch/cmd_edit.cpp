// `cm edit`: zero-shot editing with a trained consistency model (recipes/editing.h; the paper's Algorithm 4).
#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <torch/torch.h>
#include "core/image.h"           // image_grid, write_png
#include "core/sampler.h"         // consistency_fn, consistency_sample
#include "datasets/image_sets.h"  // open_image_set: the input images
#include "datasets/npz.h"         // write_npz
#include "launch/command.h"
#include "launch/model_args.h"  // --weights/--ema, --ts/--grid/--sigmas, --labels
#include "recipes/editing.h"
#include "recipes/recipe.h"
#include "recipes/sampling.h"  // sample_noise, sample_label, to_uint8_reference, recipe_model_shape

namespace fs = std::filesystem;

namespace cm::cli {
namespace {

const char* kHelp = R"(Usage: cm edit TASK RECIPE --weights FILE|DIR [--ema RATE] [OVERRIDES...] [--input IMAGES]
              [--count N] [--ts 0,10,20,39 --grid 40 | --sigmas ...] [--seed S] [--labels L] [--no-clip] [--out DIR]
TASK:
  inpaint      fill the unknown pixels: --mask FILE (pixels > 127 are known; --mask-invert flips it) or
               --mask-preset center|left|right|top|bottom|stripes (default center: the middle is generated)
  colorize     keep the luma (0.2989 R + 0.5870 G + 0.1140 B) of the input, generate the colour (RGB models)
  superres     keep the --factor F block means (default 8, or 4 below 32 px): the input is either the
               low-resolution image (model size / F) or a model-size image that is box-downsampled first
  stroke       stroke-guided generation (SDEdit): the input painting plus noise of level --sigma (default 2),
               then the consistency steps below that level
  denoise      the input is an image at noise level --sigma (required); --add-noise adds that noise first
  interpolate  spherical interpolation between two initial noises (no input): --count rows of --frames (8)
The editing tasks inpaint, colorize and superres are Algorithm 4: after every consistency step (at the
noise levels of --ts/--grid or --sigmas, default the recipe's sample.ts and sample.grid; more steps edit
better, e.g. --grid 40 --ts 0,10,20,30,39) the known part of the input is put back, so the output keeps it
exactly. Inputs (--input): an image file, a folder of images, an .npz with arr_0, or a converted dataset
directory; the first --count (default 8) images, at the model's resolution. Grey inputs of RGB models are
repeated to three channels, RGB inputs of grey models reduced to their luma.
Writes DIR/edit_<TASK>.png (rows: input, its known part, result; interpolate: one row per pair) and
DIR/edit_<TASK>.npz ('arr_0' the results as uint8 NHWC, 'inputs' the known parts). Noise of image i at step s
comes from (--seed, i, s) as in cm sample. Runs in one process, on the GPU when there is one.)";

// The first `count` images of `path` as float NCHW in [-1, 1] with `channels` channels.
torch::Tensor read_inputs(const std::string& path, int64_t count, int64_t channels) {
  auto set = data::open_image_set(path);
  auto u8 = set->read(count);
  if (u8.size(0) == 0) throw std::invalid_argument(fmt::format("--input {}: no images", path));
  auto x = u8.permute({0, 3, 1, 2}).to(torch::kFloat32) / 127.5 - 1;
  if (x.size(1) == 1 && channels == 3) x = x.repeat({1, 3, 1, 1});
  else if (x.size(1) == 3 && channels == 1) x = luma(x);
  else if (x.size(1) != channels)
    throw std::invalid_argument(fmt::format("--input {}: {}-channel images for a {}-channel model", path, x.size(1), channels));
  return x.contiguous();
}

// An inpainting mask from an image: 1 where the (first channel's) pixel is > 127.
torch::Tensor read_mask(const std::string& path, int64_t res, bool invert) {
  auto set = data::open_image_set(path);
  auto m = set->read(1);
  if (m.size(0) != 1) throw std::invalid_argument(fmt::format("--mask {}: no image", path));
  if (m.size(1) != res || m.size(2) != res)
    throw std::invalid_argument(fmt::format("--mask {} is {}x{}; the model makes {}x{} images", path, m.size(1), m.size(2), res, res));
  auto known = (m[0].select(2, 0) > 127).to(torch::kFloat32);
  return invert ? 1 - known : known;
}

void check_size(const torch::Tensor& x, int64_t res, const std::string& what) {
  if (x.size(2) != res || x.size(3) != res)
    throw std::invalid_argument(fmt::format("{}: {}x{} images; the model makes {}x{} (resize them first)", what, x.size(2), x.size(3), res, res));
}

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"add-noise", "mask-invert", "quiet"});
  args.check_known({"weights", "ema", "input", "count", "ts", "grid", "sigmas", "seed", "labels", "out", "mask", "mask-preset", "mask-invert",
                    "factor", "sigma", "add-noise", "frames", "quiet"});
  const auto plain = args.plain();
  if (plain.size() != 2) throw std::invalid_argument("expected TASK and RECIPE (see `cm edit --help`)");
  const std::string task = plain[0];
  static const std::vector<std::string> tasks = {"inpaint", "colorize", "superres", "stroke", "denoise", "interpolate"};
  if (std::find(tasks.begin(), tasks.end(), task) == tasks.end())
    throw std::invalid_argument(fmt::format("unknown editing task '{}' (tasks: {})", task, fmt::join(tasks, ", ")));
  if (!args.opt("weights")) throw std::invalid_argument("--weights FILE|DIR is required (see `cm edit --help`)");
  Recipe r = Recipe::load(plain[1], args.overrides());
  if (!r.method.is_consistency()) throw std::invalid_argument(fmt::format("recipe {} trains an EDM model; cm edit needs a consistency model (cd, ct, ict)", r.name));
  const ModelShape shape = recipe_model_shape(r);
  if (shape.resolution == 0) throw std::invalid_argument("cm edit works on images; this recipe's model makes 2-D points");
  const int64_t res = shape.resolution, ch = shape.channels;
  const int64_t count = args.int_or("count", 8);
  if (count < 1) throw std::invalid_argument("--count must be >= 1");
  const bool needs_input = task != "interpolate";
  if (needs_input && !args.opt("input")) throw std::invalid_argument(fmt::format("cm edit {} needs --input IMAGES", task));

  auto net = build_network(r, shape);
  load_weights_arg(*net, *args.opt("weights"), args.opt("ema"));
  const torch::Device dev = single_process_device(r.train.device);
  net->to(dev);
  net->eval();
  const Preconditioning p = preconditioning(r);
  const bool clip = clip_arg(args, r);
  const ConsistencyFn f = consistency_fn(net, p);
  // Interpolation samples as `cm sample` does: each estimate clipped unless --no-clip.
  const ConsistencyFn f_sample = [f, clip](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& l) {
    return clip ? f(x, t, l).clamp(-1, 1) : f(x, t, l);
  };
  const NoiseRange& range = p.range;
  std::vector<double> sigmas = noise_levels_arg(args, r);
  SamplingOptions so;
  so.seed = static_cast<uint64_t>(args.int_or("seed", 0));
  labels_arg(args, so);

  const std::string out = args.opt_or("out", ".");
  fs::create_directories(out);
  torch::Tensor inputs, known_parts, results;
  int64_t cols = 0;
  torch::Tensor labels;
  auto make_labels = [&](int64_t n) {
    return shape.num_classes > 0 ? sample_labels(so, 0, n, shape.num_classes, dev) : torch::Tensor();
  };
  const std::vector<int64_t> dims = {ch, res, res};
  auto noise_for = [&](int64_t n) { return [&, n](int64_t step) { return sample_noise_batch(so.seed, 0, n, step, dims, dev); }; };

  if (task == "interpolate") {
    const int64_t frames = args.int_or("frames", 8);
    if (frames < 2) throw std::invalid_argument("--frames must be >= 2");
    const int64_t n = count * frames;
    std::vector<torch::Tensor> z;
    for (int64_t pair = 0; pair < count; ++pair) {
      auto z0 = sample_noise(so.seed, 2 * pair, 0, dims), z1 = sample_noise(so.seed, 2 * pair + 1, 0, dims);
      for (int64_t k = 0; k < frames; ++k) z.push_back(slerp(z0, z1, static_cast<double>(k) / static_cast<double>(frames - 1)));
    }
    auto z_all = torch::stack(z).to(dev);
    auto later = noise_for(n);
    // One label per row (pair): the interpolation is between noises, not classes.
    if (shape.num_classes > 0) labels = make_labels(count).repeat_interleave(frames);
    results = consistency_sample(f_sample, sigmas, [&](int64_t step) { return step == 0 ? z_all : later(step); }, range, labels).clamp(-1, 1);
    cols = frames;
    fmt::print("interpolate: {} pairs of noises x {} frames, sigmas [{}]\n", count, frames, fmt::join(sigmas, ", "));
  } else {
    torch::Tensor y = read_inputs(*args.opt("input"), count, ch);
    const int64_t n = y.size(0);
    labels = make_labels(n);
    auto noise = noise_for(n);
    if (task == "inpaint" || task == "colorize" || task == "superres") {
      KnownPart known = KnownPart::luma();
      std::string what;
      if (task == "inpaint") {
        check_size(y, res, "--input");
        torch::Tensor mask;
        if (auto m = args.opt("mask")) {
          if (args.opt("mask-preset")) throw std::invalid_argument("give either --mask FILE or --mask-preset NAME, not both");
          mask = read_mask(*m, res, args.flag("mask-invert"));
          what = "mask " + *m;
        } else {
          const std::string preset = args.opt_or("mask-preset", "center");
          mask = preset_mask(preset, res, res);
          if (args.flag("mask-invert")) mask = 1 - mask;
          what = "mask preset " + preset;
        }
        known = KnownPart::pixels(mask);
      } else if (task == "colorize") {
        if (ch != 3) throw std::invalid_argument("colorize needs an RGB model; this one makes grey images");
        check_size(y, res, "--input");
        what = "luma kept";
      } else {
        const int64_t factor = args.int_or("factor", res >= 32 ? 8 : 4);
        if (factor < 1 || res % factor != 0) throw std::invalid_argument(fmt::format("--factor {} does not divide the model's {} px", factor, res));
        if (y.size(2) == res && y.size(3) == res) {
          y = box_downsample(y, factor);
        } else if (y.size(2) != res / factor || y.size(3) != res / factor) {
          throw std::invalid_argument(fmt::format("--input: {}x{} images; superres x{} takes {}x{} (low resolution) or {}x{} inputs", y.size(2),
                                                  y.size(3), factor, res / factor, res / factor, res, res));
        }
        y = y.repeat_interleave(factor, 2).repeat_interleave(factor, 3).contiguous();
        known = KnownPart::blocks(factor);
        what = fmt::format("x{} from {}x{}", factor, res / factor, res / factor);
      }
      y = y.to(dev);
      fmt::print("{}: {} images, {}, sigmas [{}]\n", task, n, what, fmt::join(sigmas, ", "));
      results = edit_known(f, known, y, sigmas, noise, range, labels, clip);
      inputs = y;
      known_parts = known.project(y);
    } else {
      check_size(y, res, "--input");
      y = y.to(dev);
      const double sigma = args.double_or("sigma", task == "stroke" ? 2.0 : 0.0);
      if (task == "denoise" && !args.opt("sigma")) throw std::invalid_argument("cm edit denoise needs --sigma S, the noise level of the input");
      if (sigma < range.sigma_min || sigma > range.sigma_max)
        throw std::invalid_argument(fmt::format("--sigma {} is outside [sigma_min, sigma_max] = [{}, {}]", sigma, range.sigma_min, range.sigma_max));
      std::vector<double> levels = {sigma};
      for (double s : sigmas)
        if (s < sigma) levels.push_back(s);
      const bool add = task == "stroke" || args.flag("add-noise");
      torch::Tensor start = add ? y + sigma * noise(0) : y;
      fmt::print("{}: {} images from noise level {}{}, then sigmas [{}]\n", task, n, sigma, add ? " (noise added)" : "",
                 fmt::join(std::vector<double>(levels.begin() + 1, levels.end()), ", "));
      results = denoise_from(f, start, levels, noise, range, labels, clip);
      inputs = y;
      known_parts = start.clamp(-1, 1);
    }
    cols = n;
  }

  std::vector<torch::Tensor> rows;
  if (inputs.defined()) rows = {inputs.cpu(), known_parts.cpu()};
  rows.push_back(results.cpu());
  const std::string png = (fs::path(out) / fmt::format("edit_{}.png", task)).string();
  write_png(png, image_grid(torch::cat(rows).to(torch::kFloat32), cols));
  std::vector<std::pair<std::string, torch::Tensor>> arrays = {{"arr_0", to_uint8_reference(results.cpu())}};
  if (known_parts.defined()) arrays.emplace_back("inputs", to_uint8_reference(known_parts.cpu()));
  const std::string npz = (fs::path(out) / fmt::format("edit_{}.npz", task)).string();
  data::write_npz(npz, arrays);
  fmt::print("wrote {} and {}\n", png, npz);
  return 0;
}

CommandRegistration reg({"edit", "zero-shot inpainting, colorization, super-resolution, stroke guidance, interpolation", kHelp, run});

}  // namespace
}  // namespace cm::cli
