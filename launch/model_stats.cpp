// Parameter count, per-image FLOPs and a training-memory estimate of a recipe's network (cm model summary,
// cm plan).
//
// How FLOPs are measured: the network is built shape-only (cm::ShapeOnlyParams: right shapes, no memory)
// and run on an empty batch (B = 0), which costs nothing, while an ATen RecordFunction callback sees every
// operator with its input and output shapes. Shapes without the batch dimension give the per-image work
// exactly: convolutions from the weight and output shapes, linear layers and matmuls from their operands,
// fused attention from q, k, v. Only the outermost counted operator is counted (a linear is not counted again
// as the addmm inside it). The same pass sums the per-image sizes of the intermediate outputs, which is the
// activation-memory estimate (for bf16 / fp16 training the pass runs under autocast, so each output has the
// width it has in training).
#include "launch/model_stats.h"

#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>
#include <optional>
#include <torch/torch.h>
#include "core/config.h"
#include "core/precision.h"
#include "core/nets/layers.h"
#include "recipes/recipe.h"

namespace cm::cli {
namespace {

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

}  // namespace

ModelShape model_shape(const Config& cfg) {
  // The image shape is the dataset's; the dataset table belongs to the data code, so only these keys are
  // read here and nothing else in it is checked.
  ConfigReader ds(cfg, "dataset");
  ModelShape shape;
  shape.resolution = ds.get_int("resolution", 0);
  shape.channels = ds.get_int("channels", shape.resolution > 0 ? 3 : 2);
  shape.num_classes = ds.get_int("num_classes", 0);
  return shape;
}

NetworkPtr build_model(const Config& cfg, const ModelShape& shape, std::string* arch) {
  ConfigReader m(cfg, "model");
  m.allow({"noise_label"});  // read by the preconditioning, not the network
  if (arch) *arch = m.get_string("arch", "");
  auto net = make_network(m, shape);
  m.finish();
  return net;
}

ModelStats measure_model(const Config& cfg, bool half_activations) {
  ModelStats s;
  s.shape = model_shape(cfg);
  ShapeOnlyParams shape_only;
  auto net = build_model(cfg, s.shape, &s.arch);
  s.parameters = count_parameters(*net);
  for (auto& b : net->buffers()) s.buffers += b.numel();
  std::vector<int64_t> xs = {0, s.shape.channels};
  if (s.shape.resolution > 0) xs.insert(xs.end(), {s.shape.resolution, s.shape.resolution});
  auto x = torch::zeros(xs);
  auto noise = torch::zeros({0});
  auto labels = s.shape.num_classes > 0 ? torch::zeros({0}, torch::kLong) : torch::Tensor();
  net->train();  // dropout masks count as activations when dropout is on
  torch::NoGradGuard ng;
  // bf16 / fp16 training: the pass runs under autocast (CPU autocast to bfloat16, 2 bytes as float16), so each
  // output is counted at the width autocast gives it: convolution and matmul outputs at 2 bytes, what autocast
  // keeps in float32 (norms, softmax, the float32 sums) at 4. Its weight-cast cache is off: the shape-only
  // weights are cast one operator at a time and freed.
  std::optional<AutocastScope> autocast;
  const bool cache = at::autocast::is_autocast_cache_enabled();
  if (half_activations) {
    at::autocast::set_autocast_cache_enabled(false);
    autocast.emplace(Precision::Bf16, torch::Device(torch::kCPU));
  }
  {
    OpCounter counter(s.ops);
    net->forward(x, noise, labels);
  }
  autocast.reset();
  at::autocast::set_autocast_cache_enabled(cache);
  return s;
}

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v), o;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0 && s[i - 1] != '-') o += ',';
    o += s[i];
  }
  return o;
}

MemoryEstimate estimate_memory(const ModelStats& s, int64_t batch_per_gpu, int64_t weight_copies) {
  MemoryEstimate m;
  const double w = 4.0 * static_cast<double>(s.parameters);
  m.weights = w, m.gradients = w, m.optimizer = 2 * w, m.copies = static_cast<double>(weight_copies) * w;
  m.activations_per_image = s.ops.activation_bytes;
  m.activations = static_cast<double>(batch_per_gpu) * m.activations_per_image;
  m.total = m.weights + m.gradients + m.optimizer + m.copies + m.activations;
  return m;
}


TrainingFlops training_flops(const Recipe& r, const ModelStats& s) {
  TrainingFlops f;
  const bool learned_teacher = r.method.learned_teacher();
  f.forwards = 3.0;
  if (r.method.is_consistency()) f.forwards += 1.0;
  if (learned_teacher) f.forwards += r.method.solver == Solver::Heun ? 2.0 : 1.0;
  f.per_image = 2.0 * s.ops.macs() * f.forwards;
  f.lpips_uncounted = r.method.is_consistency() && r.method.metric == Metric::Lpips;
  return f;
}

}  // namespace cm::cli
