// `cm model`: look at a recipe's network without training it.
//   summary  parameters, FLOPs per forward, training-memory estimate per GPU
//   check    load a weights file (.safetensors or a PyTorch .pt state dict) into the recipe's network
//   convert  turn a PyTorch .pt state dict into safetensors
//
// How FLOPs are measured: the network is built shape-only (cm::ShapeOnlyParams: right shapes, no memory)
// and run on an empty batch (B = 0), which costs nothing, while an ATen RecordFunction callback sees every
// operator with its input and output shapes. Shapes without the batch dimension give the per-image work
// exactly: convolutions from the weight and output shapes, linear layers and matmuls from their operands,
// fused attention from q, k, v. Only the outermost counted operator is counted (a linear is not counted again
// as the addmm inside it). The same pass sums the per-image sizes of the intermediate outputs, which is the
// activation-memory estimate.
#include <ATen/record_function.h>
#include <fmt/format.h>

#include <cmath>
#include <set>
#include <torch/torch.h>
#include "core/config.h"
#include "core/network.h"
#include "core/nets/layers.h"
#include "core/safetensors.h"
#include "core/torch_import.h"
#include "core/weights.h"
#include "launch/command.h"

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
         (estimated as the sum of intermediate outputs; --fp16 counts them at 2 bytes).
check    Load WEIGHTS into the recipe's network; on a mismatch print every missing, unexpected and
         mis-shaped name. --prefix P uses only the entries under P (e.g. "model." for {"model": state_dict}).
convert  Write the tensors of a torch.save file (zip format) as safetensors; --select KEY keeps the entries
         under KEY (e.g. "model") with the prefix removed.)";

// ---------------------------------------------------------------------------------------------------
// Operator accounting

struct OpStats {
  double conv_macs = 0, linear_macs = 0, attention_macs = 0;
  double activation_bytes = 0;      // per image
  std::set<std::string> uncounted;  // matmul-like ops whose per-image work the shapes do not determine
};

// Per-thread state of the callbacks (RecordFunction callbacks are plain function pointers). One frame per
// open operator; input shapes are copied in the start callback because the inputs are only guaranteed valid
// there (the outputs arrive in the end callback).
struct Frame {
  enum Kind { Other, Counted, Nested } kind = Other;  // Nested: a counted op inside a counted op
  std::vector<std::vector<int64_t>> inputs;
  bool transposed = false;  // aten::convolution's flag
};
thread_local OpStats* g_stats = nullptr;
thread_local std::vector<Frame> g_frames;

const std::set<std::string>& counted_ops() {
  static const std::set<std::string> s = {"aten::convolution", "aten::linear", "aten::addmm", "aten::mm",
                                          "aten::matmul", "aten::bmm", "aten::baddbmm",
                                          "aten::scaled_dot_product_attention"};
  return s;
}
// Ops whose outputs alias their input, are written in place or are constants: no activation memory.
bool is_view_op(const std::string& n) {
  static const std::set<std::string> s = {
      "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::_unsafe_view", "aten::transpose", "aten::t",
      "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice", "aten::chunk",
      "aten::split", "aten::split_with_sizes", "aten::unbind", "aten::narrow", "aten::expand", "aten::expand_as",
      "aten::as_strided", "aten::detach", "aten::alias", "aten::flatten", "aten::unflatten", "aten::view_as",
      "aten::lift_fresh", "aten::empty", "aten::zeros", "aten::full", "aten::arange", "aten::ones"};
  return s.count(n) || (!n.empty() && n.back() == '_');
}

std::vector<int64_t> sizes_of(const c10::IValue& v) {
  return v.isTensor() ? v.toTensor().sizes().vec() : std::vector<int64_t>{};
}
double prod(const std::vector<int64_t>& s, size_t from, size_t to) {
  double p = 1;
  for (size_t i = from; i < to && i < s.size(); ++i) p *= static_cast<double>(s[i]);
  return p;
}

// Per-image multiply-accumulates of one counted op, from shapes whose first dimension is the (empty) batch.
void count_macs(const Frame& f, const std::vector<c10::IValue>& out, const std::string& name, OpStats& st) {
  auto arg = [&](size_t i) { return i < f.inputs.size() ? f.inputs[i] : std::vector<int64_t>{}; };
  if (name == "aten::convolution") {
    auto x = arg(0), w = arg(1);
    if (w.size() < 3 || out.empty()) return;
    // Each output (each input, when transposed) takes (C_in / groups) x kernel multiply-accumulates
    // ((C_out / groups) x kernel when transposed: weight is [C_in, C_out / groups, k, k]).
    const double per_element = w[1] * prod(w, 2, w.size());
    const auto y = sizes_of(out[0]);
    st.conv_macs += (f.transposed ? prod(x, 1, x.size()) : prod(y, 1, y.size())) * per_element;
  } else if (name == "aten::linear") {
    auto x = arg(0), w = arg(1);
    if (x.empty() || w.size() != 2) return;
    st.linear_macs += prod(x, 1, x.size() - 1) * w[0] * w[1];
  } else if (name == "aten::addmm" || name == "aten::mm") {
    auto a = arg(name == "aten::addmm" ? 1 : 0), b = arg(name == "aten::addmm" ? 2 : 1);
    if (a.size() == 2 && b.size() == 2) st.linear_macs += static_cast<double>(a[1]) * b[1];  // one row per image
  } else if (name == "aten::matmul") {
    auto a = arg(0), b = arg(1);
    if (a.size() >= 3 && b.size() >= 2) st.attention_macs += prod(a, 1, a.size()) * b.back();
    else if (a.size() == 2 && b.size() == 2) st.linear_macs += static_cast<double>(a[1]) * b[1];
  } else if (name == "aten::scaled_dot_product_attention") {
    auto q = arg(0), k = arg(1);
    if (q.size() >= 3 && k.size() >= 2) st.attention_macs += 2 * prod(q, 1, q.size()) * k[k.size() - 2];
  } else {
    // bmm / baddbmm fold heads into the batch: with B = 0 their per-image share is unknown.
    st.uncounted.insert(name);
  }
}

void add_activation_bytes(const at::RecordFunction& fn, OpStats& st) {
  for (const auto& v : fn.outputs()) {
    if (!v.isTensor()) continue;
    const auto& t = v.toTensor();
    // Outputs that carry the batch (first dimension 0 here) are activations; others (casts of weights,
    // index tensors) do not grow with the batch.
    if (t.dim() >= 1 && t.size(0) == 0)
      st.activation_bytes += prod(t.sizes().vec(), 1, t.dim()) * static_cast<double>(t.element_size());
  }
}

std::unique_ptr<at::ObserverContext> on_op_start(const at::RecordFunction& fn) {
  Frame f;
  if (counted_ops().count(fn.name())) {
    bool inside = false;
    for (const auto& g : g_frames) inside |= g.kind != Frame::Other;
    f.kind = inside ? Frame::Nested : Frame::Counted;
  }
  if (f.kind == Frame::Counted) {
    auto in = fn.inputs();
    for (const auto& v : in) f.inputs.push_back(sizes_of(v));
    f.transposed = in.size() > 6 && in[6].isBool() && in[6].toBool();
  }
  g_frames.push_back(std::move(f));
  return nullptr;
}

void on_op_end(const at::RecordFunction& fn, at::ObserverContext*) {
  if (g_frames.empty()) return;
  Frame f = std::move(g_frames.back());
  g_frames.pop_back();
  if (!g_stats) return;
  const std::string name = fn.name();
  if (f.kind == Frame::Counted) count_macs(f, fn.outputs(), name, *g_stats);
  // Activations: outputs of the operators called by the network itself (not those inside other operators).
  if (g_frames.empty() && !is_view_op(name)) add_activation_bytes(fn, *g_stats);
}

// Installs the callbacks on this thread for its lifetime.
class OpCounter {
 public:
  explicit OpCounter(OpStats& st) {
    g_stats = &st;
    g_frames.clear();
    handle_ = at::addThreadLocalCallback(at::RecordFunctionCallback(on_op_start, on_op_end)
                                             .needsInputs(true)
                                             .needsOutputs(true)
                                             .scopes({at::RecordScope::FUNCTION}));
  }
  ~OpCounter() {
    at::removeCallback(handle_);
    g_stats = nullptr;
  }
  OpCounter(const OpCounter&) = delete;
  OpCounter& operator=(const OpCounter&) = delete;

 private:
  at::CallbackHandle handle_;
};

// ---------------------------------------------------------------------------------------------------
// summary

struct Recipe {
  Config cfg;
  ModelShape shape;
  std::string arch;
};

Recipe load_recipe(const std::string& recipe, const std::vector<std::string>& overrides) {
  Recipe r{Config::compose(recipe, overrides), {}, ""};
  // The image shape is the dataset's; the dataset table belongs to the data code, so only these keys are
  // read here and nothing else in it is checked.
  ConfigReader ds(r.cfg, "dataset");
  r.shape.resolution = ds.get_int("resolution", 0);
  r.shape.channels = ds.get_int("channels", r.shape.resolution > 0 ? 3 : 2);
  r.shape.num_classes = ds.get_int("num_classes", 0);
  return r;
}

NetworkPtr build_network(Recipe& r) {
  ConfigReader m(r.cfg, "model");
  r.arch = m.get_string("arch", "");
  auto net = make_network(m, r.shape);
  m.finish();
  return net;
}

struct Summary {
  int64_t parameters = 0, buffers = 0;
  OpStats ops;
};

Summary measure(Recipe& r) {
  ShapeOnlyParams shape_only;
  auto net = build_network(r);
  Summary s;
  s.parameters = count_parameters(*net);
  for (auto& b : net->buffers()) s.buffers += b.numel();
  std::vector<int64_t> xs = {0, r.shape.channels};
  if (r.shape.resolution > 0) xs.insert(xs.end(), {r.shape.resolution, r.shape.resolution});
  auto x = torch::zeros(xs);
  auto noise = torch::zeros({0});
  auto labels = r.shape.num_classes > 0 ? torch::zeros({0}, torch::kLong) : torch::Tensor();
  net->train();  // dropout masks count as activations when dropout is on
  torch::NoGradGuard ng;
  OpCounter counter(s.ops);
  net->forward(x, noise, labels);
  return s;
}

std::string gb(double bytes) { return fmt::format("{:.2f} GB", bytes / 1e9); }
std::string with_commas(int64_t v) {
  std::string s = std::to_string(v), o;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0 && s[i - 1] != '-') o += ',';
    o += s[i];
  }
  return o;
}

int run_summary(const Args& args, const std::vector<std::string>& plain) {
  if (plain.size() != 1) throw std::invalid_argument("expected: cm model summary RECIPE [OVERRIDES...] (see --help)");
  const int64_t batch = args.int_or("batch-per-gpu", 32);
  const int64_t emas = args.int_or("emas", 1);
  if (batch < 1 || emas < 0) throw std::invalid_argument("--batch-per-gpu must be >= 1 and --emas >= 0");
  Recipe r = load_recipe(plain[0], args.overrides());
  Summary s = measure(r);
  const double macs = s.ops.conv_macs + s.ops.linear_macs + s.ops.attention_macs;
  const double act_bytes = s.ops.activation_bytes * (args.flag("fp16") ? 0.5 : 1.0);
  const double w = 4.0 * static_cast<double>(s.parameters);
  const double mem_weights = w, mem_grads = w, mem_opt = 2 * w, mem_emas = emas * w, mem_act = batch * act_bytes;
  const double total = mem_weights + mem_grads + mem_opt + mem_emas + mem_act;
  const std::string input = r.shape.resolution > 0
                                ? fmt::format("{} x {} x {}", r.shape.channels, r.shape.resolution, r.shape.resolution)
                                : fmt::format("{}-d vectors", r.shape.channels);

  if (args.flag("json")) {
    fmt::print("{{\"recipe\": \"{}\", \"arch\": \"{}\", \"channels\": {}, \"resolution\": {}, \"num_classes\": {}, "
               "\"parameters\": {}, \"buffers\": {}, \"flops_per_image\": {:.0f}, \"flops_conv\": {:.0f}, "
               "\"flops_linear\": {:.0f}, \"flops_attention\": {:.0f}, \"activation_bytes_per_image\": {:.0f}, "
               "\"batch_per_gpu\": {}, \"emas\": {}, \"memory_weights\": {:.0f}, \"memory_gradients\": {:.0f}, "
               "\"memory_optimizer\": {:.0f}, \"memory_emas\": {:.0f}, \"memory_activations\": {:.0f}, "
               "\"memory_total\": {:.0f}}}\n",
               r.cfg.recipe_path(), r.arch, r.shape.channels, r.shape.resolution, r.shape.num_classes, s.parameters,
               s.buffers, 2 * macs, 2 * s.ops.conv_macs, 2 * s.ops.linear_macs, 2 * s.ops.attention_macs, act_bytes,
               batch, emas, mem_weights, mem_grads, mem_opt, mem_emas, mem_act, total);
    return 0;
  }
  fmt::print("recipe:       {}\n", r.cfg.recipe_path());
  fmt::print("network:      {} on {}{}\n", r.arch, input,
             r.shape.num_classes ? fmt::format(", {} classes", r.shape.num_classes) : std::string());
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
  Recipe r = load_recipe(plain[0], args.overrides());
  auto net = build_network(r);
  LoadWeightsOptions opt;
  opt.prefix = args.opt_or("prefix", "");
  try {
    load_weights_file(*net, plain[1], opt);
  } catch (const WeightsMismatchError& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 1;
  }
  fmt::print("{}: all {} tensors of the {} network loaded ({} parameters)\n", plain[1], state_dict(*net).size(), r.arch,
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
