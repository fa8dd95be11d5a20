// Sampling at scale (`cm sample`): N samples of a trained model, sharded over the ranks of a job and
// assembled on rank 0 in index order, written as the reference evaluator's .npz.
//
// Why every draw is keyed by the sample's global index: sample i's initial noise is drawn from a CPU
// generator seeded with (seed, i, 0), the noise injected before multistep step s from (seed, i, s), and
// its random class label from (seed, i). So the set of samples is a function of (seed, count, sigmas)
// alone: the same whatever --batch, the number of ranks, or which rank drew which index. (The network's
// float arithmetic may still round differently for different batch shapes; tests/test_sampling.cpp
// checks that the uint8 images come out bitwise equal on CPU.)
//
//   Sampler s(net, precond, shape, opts, device);
//   SampleSet all = sample_all(s, comm.get(), /*progress=*/true);   // rank 0: every sample, index order
//   write_sample_npz("out", all);                                   // out/samples_50000x64x64x3.npz
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>
#include <torch/types.h>
#include "core/network.h"
#include "core/parameterization.h"

namespace cm::dist {
class Communicator;
}

namespace cm {

struct Recipe;

enum class LabelMode { Random, Balanced, Fixed };

struct SamplingOptions {
  // Consistency models: the noise levels, decreasing, the first being sigma_max (one entry = one step).
  std::vector<double> sigmas;
  int64_t edm_steps = 18;  // EDM models: Heun on an edm_steps-point Karras grid (2N - 1 evaluations)
  int64_t count = 0;       // samples in total
  int64_t batch = 64;      // samples per network forward on each rank
  uint64_t seed = 0;
  LabelMode labels = LabelMode::Random;  // class-conditional models: random from (seed, index), index % K, or fixed
  int64_t fixed_class = 0;
  // Images: each denoised estimate f(x, sigma) is clipped to [-1, 1] before it is re-noised (and the result
  // too), as the reference samplers do (stochastic_iterative_sampler with clip_denoised, the JAX notebook's
  // jnp.clip) and as cm edit does. Off: the raw estimates. 2-D toy points are never clipped (no [-1, 1] range).
  bool clip_denoised = true;
};

// The standard normal noise of sample `index` at step `step` (0 = initial noise), shaped `dims` (one
// sample, no batch dimension), float32 on the CPU.
torch::Tensor sample_noise(uint64_t seed, int64_t index, int64_t step, const std::vector<int64_t>& dims);
// The class label of sample `index` under `opts` for a model of `num_classes` classes.
int64_t sample_label(const SamplingOptions& opts, int64_t index, int64_t num_classes);
// The same for indices [begin, end): noise stacked to [end - begin, dims...] and labels int64 [end - begin], on `device`.
torch::Tensor sample_noise_batch(uint64_t seed, int64_t begin, int64_t end, int64_t step, const std::vector<int64_t>& dims, torch::Device device);
torch::Tensor sample_labels(const SamplingOptions& opts, int64_t begin, int64_t end, int64_t num_classes, torch::Device device);

// Float samples of indices [begin, end) (images NCHW in [-1, 1] as the network gives them, or [n, C]
// points) and their labels (undefined for unconditional models), on `device`: consistency sampling on
// opts.sigmas, or EDM Heun for EDM models. What `cm sample` quantizes and the trainer's pictures show.
// The network is used as it is (the callers put it in eval mode).
struct FloatSamples {
  torch::Tensor x, labels;
};
FloatSamples sample_floats(NetworkImpl& net, const Preconditioning& p, const ModelShape& shape, const SamplingOptions& opts,
                           int64_t begin, int64_t end, torch::Device device);

// Rank `rank` of `world` takes the contiguous indices [begin, end) (sizes differ by at most one).
struct IndexRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
IndexRange shard_range(int64_t count, int64_t rank, int64_t world);
// Round j of rank `rank`: the j-th piece of `batch` indices of its shard_range (empty past its end). What
// sample_all and the sharded feature passes of recipes/evaluation.h work through, all ranks in step.
IndexRange round_range(int64_t count, int64_t rank, int64_t world, int64_t batch, int64_t j);
// The rounds needed for the largest shard.
int64_t round_count(int64_t count, int64_t world, int64_t batch);

// Samples in index order: images as uint8 NHWC (the reference quantization, see to_uint8_reference),
// 2-D toy points as float32 [N, C]; labels int64 [N] for class-conditional models, else undefined.
struct SampleSet {
  torch::Tensor samples;
  torch::Tensor labels;
  int64_t size() const { return samples.defined() ? samples.size(0) : 0; }
};

// float images in [-1, 1], NCHW -> uint8 NHWC as the reference image_sample.py:
// ((x + 1) * 127.5).clamp(0, 255) converted to uint8, which truncates (core/image.h's to_uint8 rounds,
// for pictures).
torch::Tensor to_uint8_reference(const torch::Tensor& nchw);

class Sampler {
 public:
  Sampler(NetworkPtr net, Preconditioning p, ModelShape shape, SamplingOptions opts, torch::Device device);
  // The samples of indices [r.begin, r.end), forwarded in pieces of at most opts.batch.
  SampleSet sample_range(IndexRange r) const;
  const SamplingOptions& options() const { return opts_; }
  const ModelShape& shape() const { return shape_; }
  // The per-sample shape of SampleSet::samples ([H, W, C] or [C]).
  std::vector<int64_t> output_dims() const;

 private:
  SampleSet sample_batch(int64_t begin, int64_t end) const;
  NetworkPtr net_;
  Preconditioning p_;
  ModelShape shape_;
  SamplingOptions opts_;
  torch::Device device_;
};

// All opts.count samples, each rank of `comm` (null or size 1: this process alone) drawing its
// shard_range in rounds of opts.batch; each round is all-gathered (every rank contributes a padded
// batch), so rank 0 holds the full set at the end and the other ranks hold nothing beyond one round
// (they return an empty set). Progress with ETA on stderr on rank 0 when `progress`.
SampleSet sample_all(const Sampler& s, dist::Communicator* comm, bool progress);

// DIR/samples_<N>x<H>x<W>x<C>.npz (images) or DIR/samples_<N>x<C>.npz (2-D points): 'arr_0' the samples,
// 'arr_1' the int64 labels when there are any. Written atomically; returns the path.
std::string write_sample_npz(const std::string& dir, const SampleSet& s);

// The data shape a recipe's network was built for, without reading the data when the dataset table says
// it (resolution, channels; num_classes when class_cond), so samples can be drawn where the training
// data is absent. Toys: 2-D points. Otherwise the dataset is opened (build_data) to ask its manifest.
ModelShape recipe_model_shape(const Recipe& r);

}  // namespace cm
