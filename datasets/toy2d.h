// Built-in 2-D toy distributions, all Gaussian mixtures so that the EDM denoiser of the data is known in
// closed form: consistency distillation can then run against an exact teacher as well as a learned one.
#pragma once
#include <memory>
#include <string>
#include <vector>
#include <torch/types.h>
#include "core/parameterization.h"
#include "core/data.h"

namespace cm {

class ConfigReader;

// Isotropic Gaussian mixture in D dimensions: weights w_k, means m_k, standard deviations s_k.
struct GaussianMixture {
  torch::Tensor weights;  // [K] float64, sums to 1
  torch::Tensor means;    // [K, D] float64
  torch::Tensor stds;     // [K] float64

  torch::Tensor sample(int64_t n, torch::Generator& gen) const;  // [n, D] float32
  // Exact E[x0 | x_sigma = x] for x_sigma = x0 + sigma z: posterior-weighted component means,
  // m_k + s_k^2 / (s_k^2 + sigma^2) (x - m_k), computed in float64 with log-sum-exp responsibilities.
  torch::Tensor denoise(const torch::Tensor& x, const torch::Tensor& sigma) const;
  DenoiserFn denoiser() const;
};

// "ring" (8 Gaussians on a circle), "moons" (two interleaved half circles as 2 x 32 narrow Gaussians),
// "grid" (5 x 5 Gaussians). All fit in [-1, 1] with data std about 0.5.
GaussianMixture make_toy_mixture(const std::string& name);
std::vector<std::string> toy_names();

// Infinite stream of toy samples. Global batch b of step k is drawn from a generator seeded with
// (seed, k); rank r keeps rows [r b/W, (r+1) b/W), so the stream does not depend on the world size.
class ToySource : public DataSource {
 public:
  ToySource(GaussianMixture mix, std::string name, int64_t global_batch, int64_t rank, int64_t world, uint64_t seed);
  Batch next() override;
  DataCursor cursor() const override { return cursor_; }
  void restore(const DataCursor& c) override { cursor_ = c; }
  ModelShape shape() const override;
  std::string describe() const override;
  const GaussianMixture& mixture() const { return mix_; }
  DenoiserFn exact_denoiser() const override { return mix_.denoiser(); }
  torch::Tensor fresh_points(int64_t n, torch::Generator& gen) const override { return mix_.sample(n, gen); }

 private:
  GaussianMixture mix_;
  std::string name_;
  int64_t global_batch_, rank_, world_;
  uint64_t seed_;
  DataCursor cursor_;
};

}  // namespace cm
