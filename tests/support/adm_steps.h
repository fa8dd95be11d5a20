// A small ADM UNet trained for a few CT steps on fixed random images, in process (no dataset): for tests that
// compare the step's layouts and threading (train.lanes, train.channels_last) on the CPU and on CUDA.
#pragma once
#include <torch/torch.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>
#include "core/rng.h"
#include "recipes/recipe.h"
#include "recipes/trainer.h"

namespace cm::test {

// Fixed random images, the same batches for every trainer built on it.
class FixedImages : public DataSource {
 public:
  FixedImages(int64_t local, int64_t resolution) : local_(local), res_(resolution) {}
  Batch next() override {
    auto gen = cpu_generator(derive_seed(99, static_cast<uint64_t>(step_++)));
    return Batch{torch::rand({local_, 3, res_, res_}, gen, torch::kFloat) * 2 - 1, torch::Tensor()};
  }
  DataCursor cursor() const override { return DataCursor{}; }
  void restore(const DataCursor&) override {}
  ModelShape shape() const override { return ModelShape{3, res_, 0}; }
  std::string describe() const override { return "fixed random images"; }

 private:
  int64_t local_, res_, step_ = 0;
};

struct AdmSteps {
  std::vector<torch::Tensor> params;  // the student's, after the steps (clones, on the CPU, layout kept)
  int64_t lanes = 1;
  bool channels_last = false;
};

// cifar10_ct with a 16x16 ADM of 32 channels (attention at 8, 16 channels per head), unconditional, batch 8,
// 2 threads, Adam 4e-4 (RAdam's first steps barely move), l2, 3 steps; `extra` overrides come last.
inline AdmSteps adm_after_steps(const std::vector<std::string>& extra) {
  std::vector<std::string> ov = {"model=adm_small", "model.model_channels=32", "model.num_head_channels=16", "model.class_cond=false",
                                 "model.attention_resolutions=[8]", "train.batch=8", "train.threads=2", "train.lr=4e-4",
                                 "train.ema_rates=[0.9999]", "method.metric=l2", "train.optimizer=adam"};
  ov.insert(ov.end(), extra.begin(), extra.end());
  TrainerOptions o;
  o.quiet = true;
  o.make_data = [](const Recipe& r, int64_t, int64_t w, torch::Device) { return std::make_unique<FixedImages>(r.train.batch / w, 16); };
  Trainer t(Recipe::load("cifar10_ct", ov), o);
  AdmSteps out;
  out.lanes = t.lanes();
  out.channels_last = t.channels_last();
  t.benchmark(0, 3);
  for (auto& q : t.objective().student()->parameters()) out.params.push_back(q.detach().to(torch::kCPU).clone());
  return out;
}

// The largest |a - b| over corresponding tensors (a count mismatch gives infinity).
inline double max_diff(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return 1e300;
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, (a[i] - b[i]).abs().max().item<double>());
  return m;
}

}  // namespace cm::test
