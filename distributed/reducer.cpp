// GradReducer (see reducer.h).
#include "distributed/reducer.h"

#include <mutex>
#include <set>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include "core/compat.h"
#include "distributed/check.h"
#include "distributed/world.h"

namespace cm::dist {
namespace {

std::string shape_str(const torch::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }

// A tensor over [offset, offset + numel) of `flat`'s storage, shaped like `like`. Made with set_() instead of
// narrow().view() on purpose: it shares the storage without being an autograd view of the bucket, so code
// that calls grad.detach_() (1.13's Optimizer::zero_grad does) keeps working, where a view would throw.
torch::Tensor slice_of(const torch::Tensor& flat, int64_t offset, const torch::Tensor& like) {
  torch::NoGradGuard no_grad;
  torch::Tensor t = torch::empty({0}, flat.options());
  // The parameter's own strides when it is dense (a channels-last convolution weight: its gradient then has
  // the layout backward writes, and the bucket still holds numel() contiguous elements), else contiguous.
  if (like.is_non_overlapping_and_dense()) t.set_(flat.storage(), flat.storage_offset() + offset, like.sizes(), like.strides());
  else t.set_(flat.storage(), flat.storage_offset() + offset, like.sizes());
  return t;
}

}  // namespace

struct GradReducer::State {
  struct Slot {
    size_t bucket = 0;
    int64_t offset = 0;  // elements into the bucket
    torch::Tensor grad;  // the parameter's gradient tensor over the bucket
  };
  struct Bucket {
    torch::Tensor flat;
    std::vector<size_t> params;
    size_t pending = 0;  // gradients still to come in this synchronized backward
    std::shared_ptr<Work> work;
  };

  std::mutex mu;
  std::shared_ptr<Communicator> comm;
  ReducerOptions opt;
  std::vector<torch::Tensor> params;
  std::vector<std::string> names;
  std::vector<int64_t> slot_of;  // param index -> slot index, -1 when not bucketed
  std::vector<Slot> slots;       // per param (unused entries for params without grad)
  std::vector<Bucket> buckets;
  std::vector<char> fired;       // gradient arrived in this synchronized backward
  size_t next_launch = 0;        // buckets [0, next_launch) are launched
  int no_sync_depth = 0;
  size_t launched_in_backward = 0;  // this step
  size_t last_launched_in_backward = 0;  // the last finished step
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;  // keeps the hooked nodes alive
  std::vector<uintptr_t> hook_keys;

  std::string label(size_t b) const {
    return fmt::format("{} bucket {}/{} ({:.1f} MB)", opt.label, b, buckets.size(),
                       static_cast<double>(buckets[b].flat.nbytes()) / 1e6);
  }

  // Make param i's .grad the bucket slice again if something replaced or dropped it.
  void bind(size_t i) {
    Slot& s = slots[i];
    torch::Tensor& g = params[i].mutable_grad();
    if (g.defined() && g.data_ptr() == s.grad.data_ptr() && g.sizes() == s.grad.sizes()) return;
    torch::NoGradGuard no_grad;
    if (g.defined()) s.grad.copy_(g);
    else s.grad.zero_();
    g = s.grad;
  }

  void launch(size_t b, bool from_hook) {
    buckets[b].work = comm->all_reduce_async(buckets[b].flat, ReduceOp::Avg, label(b));
    if (from_hook) ++launched_in_backward;
  }

  // Launch, in order, every bucket whose gradients are all ready.
  void launch_ready(bool from_hook) {
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0) launch(next_launch++, from_hook);
  }

  void on_grad_ready(size_t i) {
    std::lock_guard<std::mutex> lk(mu);
    bind(i);
    if (no_sync_depth > 0) return;
    if (fired[i])
      throw DistError(fmt::format(
          "{}: parameter '{}' received its gradient twice in one synchronized backward. Run every backward "
          "but the last of a step inside reducer.no_sync(), and call reducer.finish() before the next step.",
          rank_tag(), names[i]));
    fired[i] = 1;
    Bucket& bk = buckets[slots[i].bucket];
    if (bk.pending == 0 || slots[i].bucket < next_launch)
      throw DistError(fmt::format("{}: parameter '{}' became ready after its bucket was reduced (internal error)",
                                  rank_tag(), names[i]));
    --bk.pending;
    if (opt.overlap) launch_ready(/*from_hook=*/true);
  }

  void reset_step() {
    std::fill(fired.begin(), fired.end(), 0);
    for (auto& b : buckets) b.pending = b.params.size();
    next_launch = 0;
  }
};

GradReducer::GradReducer(std::shared_ptr<Communicator> comm, std::vector<torch::Tensor> params, ReducerOptions options)
    : comm_(std::move(comm)), state_(std::make_shared<State>()) {
  if (!comm_) throw DistError("GradReducer: null communicator");
  State& s = *state_;
  s.comm = comm_;
  s.opt = std::move(options);
  s.params = std::move(params);
  const size_t n = s.params.size();
  if (!s.opt.names.empty() && s.opt.names.size() != n)
    throw DistError(fmt::format("GradReducer: {} names for {} parameters", s.opt.names.size(), n));
  for (size_t i = 0; i < n; ++i) s.names.push_back(s.opt.names.empty() ? fmt::format("param[{}]", i) : s.opt.names[i]);
  if (s.opt.bucket_mb <= 0) throw DistError(fmt::format("GradReducer: bucket_mb must be > 0 (got {})", s.opt.bucket_mb));

  std::set<const void*> seen;
  for (size_t i = 0; i < n; ++i) {
    const auto& p = s.params[i];
    if (!p.defined()) throw DistError(fmt::format("GradReducer: parameter '{}' is undefined", s.names[i]));
    if (p.device() != comm_->device())
      throw DistError(fmt::format("{}: parameter '{}' is on {} but the {} communicator works on {}; move the model "
                                  "to the rank's device before creating the reducer", rank_tag(), s.names[i],
                                  p.device().str(), comm_->backend(), comm_->device().str()));
    if (!seen.insert(p.unsafeGetTensorImpl()).second)
      throw DistError(fmt::format("GradReducer: parameter '{}' appears twice in the list", s.names[i]));
  }
  if (s.opt.sync_at_start) broadcast_parameters();

  // Buckets, in reverse order of registration.
  const int64_t cap = static_cast<int64_t>(s.opt.bucket_mb * 1024.0 * 1024.0);
  s.slots.resize(n);
  s.slot_of.assign(n, -1);
  std::vector<std::vector<size_t>> groups;
  std::vector<int64_t> group_bytes;
  for (size_t k = n; k-- > 0;) {
    const auto& p = s.params[k];
    if (!p.requires_grad()) continue;
    const int64_t bytes = static_cast<int64_t>(p.numel()) * static_cast<int64_t>(p.element_size());
    const bool fresh = groups.empty() || s.params[groups.back().front()].scalar_type() != p.scalar_type() ||
                       group_bytes.back() + bytes > cap;
    if (fresh) {
      groups.emplace_back();
      group_bytes.push_back(0);
    }
    groups.back().push_back(k);
    group_bytes.back() += bytes;
  }
  for (auto& g : groups) {
    State::Bucket b;
    int64_t numel = 0;
    for (size_t k : g) {
      s.slots[k].bucket = s.buckets.size();
      s.slots[k].offset = numel;
      s.slot_of[k] = static_cast<int64_t>(s.buckets.size());
      numel += s.params[k].numel();
    }
    b.flat = torch::zeros({numel}, s.params[g.front()].options().requires_grad(false));
    b.params = g;
    for (size_t k : g) {
      s.slots[k].grad = slice_of(b.flat, s.slots[k].offset, s.params[k]);
      torch::NoGradGuard no_grad;
      if (s.params[k].grad().defined()) s.slots[k].grad.copy_(s.params[k].grad());
      s.params[k].mutable_grad() = s.slots[k].grad;
    }
    s.buckets.push_back(std::move(b));
  }
  s.fired.assign(n, 0);
  s.reset_step();

  // Hooks: capture a weak pointer, so a hook that outlives the reducer (the parameters may) does nothing.
  std::weak_ptr<State> weak = state_;
  for (size_t k = 0; k < n; ++k) {
    if (!s.params[k].requires_grad()) continue;
    uintptr_t key = 0;
    s.accumulators.push_back(compat::add_grad_ready_hook(
        s.params[k], [weak, k] { if (auto st = weak.lock()) st->on_grad_ready(k); }, &key));
    s.hook_keys.push_back(key);
  }
}

std::unique_ptr<GradReducer> GradReducer::for_module(std::shared_ptr<Communicator> comm, torch::nn::Module& module,
                                                     ReducerOptions options) {
  std::vector<torch::Tensor> params;
  options.names.clear();
  for (auto& item : module.named_parameters()) {
    options.names.push_back(item.key());
    params.push_back(item.value());
  }
  options.buffers.clear();
  options.buffer_names.clear();
  for (auto& item : module.named_buffers()) {
    options.buffer_names.push_back(item.key());
    options.buffers.push_back(item.value());
  }
  return std::make_unique<GradReducer>(std::move(comm), std::move(params), std::move(options));
}

GradReducer::~GradReducer() {
  State& s = *state_;
  for (size_t i = 0; i < s.accumulators.size(); ++i) compat::remove_grad_ready_hook(s.accumulators[i], s.hook_keys[i]);
}

void GradReducer::broadcast_parameters() {
  State& s = *state_;
  // 1. Shapes: every rank sends "kind name dtype shape" per tensor; all ranks compare with rank 0 and throw
  //    the same message (no rank is left waiting in the broadcast below).
  auto describe = [](const std::string& kind, const std::string& name, const torch::Tensor& t) {
    return fmt::format("{} '{}' {} {}\n", kind, name, c10::toString(t.scalar_type()), shape_str(t));
  };
  std::vector<std::string> mine;
  std::string text;
  for (size_t i = 0; i < s.params.size(); ++i) mine.push_back(describe("parameter", s.names[i], s.params[i]));
  for (size_t i = 0; i < s.opt.buffers.size(); ++i)
    mine.push_back(describe("buffer", i < s.opt.buffer_names.size() ? s.opt.buffer_names[i] : fmt::format("buffer[{}]", i),
                            s.opt.buffers[i]));
  for (auto& m : mine) text += m;
  const auto all = all_gather_strings(text);
  std::vector<std::string> problems;
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r] == all[0]) continue;
    std::vector<std::string> lines0, lines;
    auto split = [](const std::string& t, std::vector<std::string>& out) {
      size_t a = 0;
      for (size_t b; (b = t.find('\n', a)) != std::string::npos; a = b + 1) out.push_back(t.substr(a, b - a));
    };
    split(all[0], lines0);
    split(all[r], lines);
    if (lines.size() != lines0.size())
      problems.push_back(fmt::format("rank {} has {} parameters+buffers, rank 0 has {}", r, lines.size(), lines0.size()));
    for (size_t i = 0; i < std::min(lines.size(), lines0.size()); ++i)
      if (lines[i] != lines0[i]) problems.push_back(fmt::format("rank 0: {}  vs  rank {}: {}", lines0[i], r, lines[i]));
  }
  if (!problems.empty()) {
    const size_t shown = std::min<size_t>(problems.size(), 20);
    throw DistError(fmt::format(
        "{}: the model differs across ranks ({} difference(s)):\n  {}{}\nEvery rank must build the same model "
        "from the same config (check the overrides given to each rank).",
        rank_tag(), problems.size(), fmt::join(problems.begin(), problems.begin() + shown, "\n  "),
        problems.size() > shown ? "\n  ..." : ""));
  }
  // 2. Values: rank 0's parameters and buffers everywhere (writes through detached aliases; no autograd).
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < s.params.size(); ++i) comm_->broadcast(s.params[i].detach(), 0, "broadcast " + s.names[i]);
  for (auto& b : s.opt.buffers) comm_->broadcast(b.detach(), 0, "broadcast buffer");
}

void GradReducer::prepare() {
  State& s = *state_;
  std::lock_guard<std::mutex> lk(s.mu);
  if (s.next_launch > 0)
    throw DistError(fmt::format("{}: reducer.prepare() while {} bucket(s) of the previous step are in flight; call "
                                "reducer.finish() after the last backward of every step", rank_tag(), s.next_launch));
  torch::NoGradGuard no_grad;
  for (auto& b : s.buckets) b.flat.zero_();
  for (size_t i = 0; i < s.params.size(); ++i)
    if (s.slot_of[i] >= 0) s.bind(i);
  s.reset_step();
}

void GradReducer::finish() {
  State& s = *state_;
  std::vector<std::shared_ptr<Work>> works;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    if (s.no_sync_depth > 0)
      throw DistError(fmt::format("{}: reducer.finish() inside a no_sync() scope; end the scope first", rank_tag()));
    // Parameters without a gradient this step (unused, or gradient dropped): their slice is what it is (zero
    // after prepare(), or the accumulated micro-batches), re-attached if replaced.
    for (size_t i = 0; i < s.params.size(); ++i)
      if (s.slot_of[i] >= 0 && !s.fired[i]) s.bind(i);
    while (s.next_launch < s.buckets.size()) s.launch(s.next_launch++, /*from_hook=*/false);
    for (auto& b : s.buckets) works.push_back(std::move(b.work));
    s.reset_step();
    s.last_launched_in_backward = s.launched_in_backward;
    s.launched_in_backward = 0;
  }
  for (auto& w : works)
    if (w) w->wait();
}

GradReducer::NoSync::NoSync(GradReducer* r) : r_(r) {
  std::lock_guard<std::mutex> lk(r_->state_->mu);
  ++r_->state_->no_sync_depth;
}
GradReducer::NoSync::NoSync(NoSync&& o) noexcept : r_(o.r_) { o.r_ = nullptr; }
GradReducer::NoSync::~NoSync() {
  if (!r_) return;
  std::lock_guard<std::mutex> lk(r_->state_->mu);
  --r_->state_->no_sync_depth;
}

void GradReducer::set_local_accumulation(bool on) {
  std::lock_guard<std::mutex> lk(state_->mu);
  state_->no_sync_depth += on ? 1 : -1;
}

void GradReducer::set_overlap(bool overlap) {
  std::lock_guard<std::mutex> lk(state_->mu);
  state_->opt.overlap = overlap;
}

std::vector<GradReducer::BucketInfo> GradReducer::buckets() const {
  std::lock_guard<std::mutex> lk(state_->mu);
  std::vector<BucketInfo> out;
  for (auto& b : state_->buckets)
    out.push_back(BucketInfo{b.flat.numel(), static_cast<int64_t>(b.flat.nbytes()), b.flat.scalar_type(), b.params});
  return out;
}

torch::Tensor GradReducer::bucket_tensor(size_t b) const {
  std::lock_guard<std::mutex> lk(state_->mu);
  return state_->buckets.at(b).flat;
}

size_t GradReducer::launched_during_backward() const {
  std::lock_guard<std::mutex> lk(state_->mu);
  return state_->last_launched_in_backward;
}

}  // namespace cm::dist
