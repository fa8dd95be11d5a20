// `cm edit`: zero-shot editing with a trained consistency model (recipes/editing.h; the paper's Algorithm 4).
#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <torch/torch.h>
#include "core/image.h"           // image_grid, write_png
#include "core/sampler.h"         // consistency_fn, consistency_sample
#include "recipes/eval/image_sets.h"  // open_image_set: the input images
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

// The model and sampling settings every task uses.
struct Editor {
  std::string task;
  Recipe r;
  ModelShape shape;
  int64_t res = 0, ch = 0, count = 0;
  torch::Device dev = torch::kCPU;
  NoiseRange range;
  bool clip = true;
  ConsistencyFn f, f_sample;  // f_sample: each estimate clipped unless --no-clip (as `cm sample` samples)
  std::vector<double> sigmas;
  SamplingOptions so;

  std::vector<int64_t> dims() const { return {ch, res, res}; }
  torch::Tensor labels_for(int64_t n) const {
    return shape.num_classes > 0 ? sample_labels(so, 0, n, shape.num_classes, dev) : torch::Tensor();
  }
  EditNoise noise_for(int64_t n) const {
    return [seed = so.seed, n, dims = dims(), dev = dev](int64_t step) { return sample_noise_batch(seed, 0, n, step, dims, dev); };
  }
};

// What a task made: the rows of the picture (inputs and their known parts, when there are inputs; results).
struct Edited {
  torch::Tensor inputs, known_parts, results;
  int64_t cols = 0;
};

const std::vector<std::string>& edit_tasks() {
  static const std::vector<std::string> tasks = {"inpaint", "colorize", "superres", "stroke", "denoise", "interpolate"};
  return tasks;
}

// Checks the command line, loads the recipe and the weights.
Editor make_editor(const Args& args) {
  const auto plain = args.plain();
  if (plain.size() != 2) throw std::invalid_argument("expected TASK and RECIPE (see `cm edit --help`)");
  Editor e;
  e.task = plain[0];
  const auto& tasks = edit_tasks();
  if (std::find(tasks.begin(), tasks.end(), e.task) == tasks.end())
    throw std::invalid_argument(fmt::format("unknown editing task '{}' (tasks: {})", e.task, fmt::join(tasks, ", ")));
  if (!args.opt("weights")) throw std::invalid_argument("--weights FILE|DIR is required (see `cm edit --help`)");
  e.r = Recipe::load(plain[1], args.overrides());
  const Recipe& r = e.r;
  if (!r.method.is_consistency()) throw std::invalid_argument(fmt::format("recipe {} trains an EDM model; cm edit needs a consistency model (cd, ct, ict)", r.name));
  e.shape = recipe_model_shape(r);
  if (e.shape.resolution == 0) throw std::invalid_argument("cm edit works on images; this recipe's model makes 2-D points");
  e.res = e.shape.resolution, e.ch = e.shape.channels;
  e.count = args.int_or("count", 8);
  if (e.count < 1) throw std::invalid_argument("--count must be >= 1");
  if (e.task != "interpolate" && !args.opt("input")) throw std::invalid_argument(fmt::format("cm edit {} needs --input IMAGES", e.task));

  auto net = build_network(r, e.shape);
  load_weights_arg(*net, *args.opt("weights"), args.opt("ema"));
  e.dev = single_process_device(r.train.device);
  net->to(e.dev);
  net->eval();
  const Preconditioning p = preconditioning(r);
  e.clip = clip_arg(args, r);
  e.f = consistency_fn(net, p);
  e.f_sample = [f = e.f, clip = e.clip](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& l) {
    return clip ? f(x, t, l).clamp(-1, 1) : f(x, t, l);
  };
  e.range = p.range;
  e.sigmas = noise_levels_arg(args, r);
  e.so.seed = static_cast<uint64_t>(args.int_or("seed", 0));
  labels_arg(args, e.so);
  return e;
}

// interpolate: --count rows of --frames images between two initial noises.
Edited interpolate(const Editor& e, const Args& args) {
  const int64_t frames = args.int_or("frames", 8);
  if (frames < 2) throw std::invalid_argument("--frames must be >= 2");
  const int64_t n = e.count * frames;
  const auto dims = e.dims();
  std::vector<torch::Tensor> z;
  for (int64_t pair = 0; pair < e.count; ++pair) {
    auto z0 = sample_noise(e.so.seed, 2 * pair, 0, dims), z1 = sample_noise(e.so.seed, 2 * pair + 1, 0, dims);
    for (int64_t k = 0; k < frames; ++k) z.push_back(slerp(z0, z1, static_cast<double>(k) / static_cast<double>(frames - 1)));
  }
  auto z_all = torch::stack(z).to(e.dev);
  auto later = e.noise_for(n);
  // One label per row (pair): the interpolation is between noises, not classes.
  torch::Tensor labels;
  if (e.shape.num_classes > 0) labels = e.labels_for(e.count).repeat_interleave(frames);
  Edited out;
  out.results = consistency_sample(e.f_sample, e.sigmas, [&](int64_t step) { return step == 0 ? z_all : later(step); }, e.range, labels)
                    .clamp(-1, 1);
  out.cols = frames;
  fmt::print("interpolate: {} pairs of noises x {} frames, sigmas [{}]\n", e.count, frames, fmt::join(e.sigmas, ", "));
  return out;
}

// inpaint: the known pixels of --mask or --mask-preset. Sets `what` for the progress line.
KnownPart inpaint_part(const Editor& e, const Args& args, const torch::Tensor& y, std::string& what) {
  check_size(y, e.res, "--input");
  torch::Tensor mask;
  if (auto m = args.opt("mask")) {
    if (args.opt("mask-preset")) throw std::invalid_argument("give either --mask FILE or --mask-preset NAME, not both");
    mask = read_mask(*m, e.res, args.flag("mask-invert"));
    what = "mask " + *m;
  } else {
    const std::string preset = args.opt_or("mask-preset", "center");
    mask = preset_mask(preset, e.res, e.res);
    if (args.flag("mask-invert")) mask = 1 - mask;
    what = "mask preset " + preset;
  }
  return KnownPart::pixels(mask);
}

// superres: the --factor block means; `y` becomes the low-resolution input repeated to the model's size.
KnownPart superres_part(const Editor& e, const Args& args, torch::Tensor& y, std::string& what) {
  const int64_t res = e.res;
  const int64_t factor = args.int_or("factor", res >= 32 ? 8 : 4);
  if (factor < 1 || res % factor != 0) throw std::invalid_argument(fmt::format("--factor {} does not divide the model's {} px", factor, res));
  if (y.size(2) == res && y.size(3) == res) {
    y = box_downsample(y, factor);
  } else if (y.size(2) != res / factor || y.size(3) != res / factor) {
    throw std::invalid_argument(fmt::format("--input: {}x{} images; superres x{} takes {}x{} (low resolution) or {}x{} inputs", y.size(2),
                                            y.size(3), factor, res / factor, res / factor, res, res));
  }
  y = y.repeat_interleave(factor, 2).repeat_interleave(factor, 3).contiguous();
  what = fmt::format("x{} from {}x{}", factor, res / factor, res / factor);
  return KnownPart::blocks(factor);
}

// inpaint, colorize, superres (Algorithm 4): the known part of the input is put back after every step.
Edited edit_known_part(const Editor& e, const Args& args, torch::Tensor y, const torch::Tensor& labels, const EditNoise& noise) {
  KnownPart known = KnownPart::luma();
  std::string what;
  if (e.task == "inpaint") {
    known = inpaint_part(e, args, y, what);
  } else if (e.task == "colorize") {
    if (e.ch != 3) throw std::invalid_argument("colorize needs an RGB model; this one makes grey images");
    check_size(y, e.res, "--input");
    what = "luma kept";
  } else {
    known = superres_part(e, args, y, what);
  }
  y = y.to(e.dev);
  fmt::print("{}: {} images, {}, sigmas [{}]\n", e.task, y.size(0), what, fmt::join(e.sigmas, ", "));
  Edited out;
  out.results = edit_known(e.f, known, y, e.sigmas, noise, e.range, labels, e.clip);
  out.inputs = y;
  out.known_parts = known.project(y);
  return out;
}

// stroke, denoise: the input at noise level --sigma, then the consistency steps below that level.
Edited edit_from_noise_level(const Editor& e, const Args& args, torch::Tensor y, const torch::Tensor& labels, const EditNoise& noise) {
  check_size(y, e.res, "--input");
  y = y.to(e.dev);
  const NoiseRange& range = e.range;
  const double sigma = args.double_or("sigma", e.task == "stroke" ? 2.0 : 0.0);
  if (e.task == "denoise" && !args.opt("sigma")) throw std::invalid_argument("cm edit denoise needs --sigma S, the noise level of the input");
  if (sigma < range.sigma_min || sigma > range.sigma_max)
    throw std::invalid_argument(fmt::format("--sigma {} is outside [sigma_min, sigma_max] = [{}, {}]", sigma, range.sigma_min, range.sigma_max));
  std::vector<double> levels = {sigma};
  for (double s : e.sigmas)
    if (s < sigma) levels.push_back(s);
  const bool add = e.task == "stroke" || args.flag("add-noise");
  torch::Tensor start = add ? y + sigma * noise(0) : y;
  fmt::print("{}: {} images from noise level {}{}, then sigmas [{}]\n", e.task, y.size(0), sigma, add ? " (noise added)" : "",
             fmt::join(std::vector<double>(levels.begin() + 1, levels.end()), ", "));
  Edited out;
  out.results = denoise_from(e.f, start, levels, noise, range, labels, e.clip);
  out.inputs = y;
  out.known_parts = start.clamp(-1, 1);
  return out;
}

// The tasks that start from --input images.
Edited edit_inputs(const Editor& e, const Args& args) {
  torch::Tensor y = read_inputs(*args.opt("input"), e.count, e.ch);
  const int64_t n = y.size(0);
  const torch::Tensor labels = e.labels_for(n);
  const EditNoise noise = e.noise_for(n);
  const bool known_part = e.task == "inpaint" || e.task == "colorize" || e.task == "superres";
  Edited out = known_part ? edit_known_part(e, args, y, labels, noise) : edit_from_noise_level(e, args, y, labels, noise);
  out.cols = n;
  return out;
}

// DIR/edit_<TASK>.png and DIR/edit_<TASK>.npz.
void write_outputs(const std::string& task, const Edited& ed, const std::string& out) {
  std::vector<torch::Tensor> rows;
  if (ed.inputs.defined()) rows = {ed.inputs.cpu(), ed.known_parts.cpu()};
  rows.push_back(ed.results.cpu());
  const std::string png = (fs::path(out) / fmt::format("edit_{}.png", task)).string();
  write_png(png, image_grid(torch::cat(rows).to(torch::kFloat32), ed.cols));
  std::vector<std::pair<std::string, torch::Tensor>> arrays = {{"arr_0", to_uint8_reference(ed.results.cpu())}};
  if (ed.known_parts.defined()) arrays.emplace_back("inputs", to_uint8_reference(ed.known_parts.cpu()));
  const std::string npz = (fs::path(out) / fmt::format("edit_{}.npz", task)).string();
  data::write_npz(npz, arrays);
  fmt::print("wrote {} and {}\n", png, npz);
}

int run(const std::vector<std::string>& argv) {
  if (wants_help(argv, kHelp)) return 0;
  Args args(argv, {"add-noise", "mask-invert", "quiet"});
  args.check_known({"weights", "ema", "input", "count", "ts", "grid", "sigmas", "seed", "labels", "out", "mask", "mask-preset", "mask-invert",
                    "factor", "sigma", "add-noise", "frames", "quiet"});
  const Editor e = make_editor(args);
  const std::string out = args.opt_or("out", ".");
  fs::create_directories(out);
  const Edited ed = e.task == "interpolate" ? interpolate(e, args) : edit_inputs(e, args);
  write_outputs(e.task, ed, out);
  return 0;
}

CommandRegistration reg({"edit", "zero-shot inpainting, colorization, super-resolution, stroke guidance, interpolation", kHelp, run});

}  // namespace
}  // namespace cm::cli
