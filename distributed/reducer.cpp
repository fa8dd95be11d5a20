// Bucketed gradient averaging (see reducer.h).
#include "distributed/reducer.h"

#include <fmt/format.h>
#include <torch/torch.h>

namespace cm {

GradReducer::GradReducer(Communicator& comm, std::vector<torch::Tensor> params, int64_t bucket_bytes)
    : comm_(comm), params_(std::move(params)) {
  Bucket cur;
  int64_t bytes = 0;
  auto close = [&] {
    if (cur.members.empty()) return;
    int64_t n = 0;
    for (size_t i : cur.members) n += params_[i].numel();
    cur.flat = torch::zeros({n}, params_[cur.members[0]].options());
    buckets_.push_back(std::move(cur));
    cur = Bucket();
    bytes = 0;
  };
  for (size_t k = params_.size(); k-- > 0;) {
    const auto& p = params_[k];
    if (!cur.members.empty() && p.scalar_type() != params_[cur.members[0]].scalar_type()) close();
    int64_t off = 0;
    for (size_t i : cur.members) off += params_[i].numel();
    cur.members.push_back(k);
    cur.offsets.push_back(off);
    bytes += p.numel() * p.element_size();
    if (bytes >= bucket_bytes) close();
  }
  close();
  bind_grads();
}

void GradReducer::bind_grads() {
  for (auto& b : buckets_)
    for (size_t j = 0; j < b.members.size(); ++j) {
      auto& p = params_[b.members[j]];
      p.mutable_grad() = b.flat.narrow(0, b.offsets[j], p.numel()).view(p.sizes());
    }
}

void GradReducer::sync_parameters(const std::vector<std::string>& names) {
  // Shapes first: a rank with another architecture must be named, not silently overwritten.
  std::vector<torch::Tensor> shapes;
  for (auto& p : params_) shapes.push_back(torch::tensor(p.sizes().vec(), torch::kInt64));
  const uint64_t mine = tensor_hash(shapes);
  auto all = comm_.all_gather_u64(mine);
  for (size_t r = 0; r < all.size(); ++r)
    if (all[r] != all[0]) {
      // Find the first differing parameter by comparing numel sums up to each index.
      std::string which = "(unknown)";
      for (size_t i = 0; i < params_.size(); ++i) {
        auto v = comm_.all_gather_u64(static_cast<uint64_t>(params_[i].numel()));
        bool same = true;
        for (auto x : v) same &= x == v[0];
        if (!same) {
          which = i < names.size() ? names[i] : fmt::format("#{}", i);
          break;
        }
      }
      throw std::runtime_error(fmt::format("parameter shapes differ between rank 0 and rank {} (first difference: '{}'): "
                                           "all ranks must build the same model from the same config", r, which));
    }
  torch::NoGradGuard ng;
  for (auto& p : params_) {
    auto c = p.detach();
    comm_.broadcast(c, 0);
  }
}

void GradReducer::all_reduce_gradients() {
  // Autograd accumulates into the existing .grad in place (our views), but a caller may have replaced a
  // grad; copy such a grad into its slot and re-bind, so the collective always sees every gradient.
  for (auto& b : buckets_)
    for (size_t j = 0; j < b.members.size(); ++j) {
      auto& p = params_[b.members[j]];
      auto slot = b.flat.narrow(0, b.offsets[j], p.numel());
      if (!p.grad().defined()) {
        slot.zero_();
      } else if (p.grad().data_ptr() != slot.data_ptr()) {
        slot.copy_(p.grad().reshape({-1}));
      }
    }
  bind_grads();
  if (comm_.size() == 1) return;
  for (auto& b : buckets_) comm_.all_reduce(b.flat, /*average=*/true);
}

}  // namespace cm
