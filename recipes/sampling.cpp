// Sampling at scale (see sampling.h).
#include "recipes/sampling.h"

#include <fmt/format.h>
#include <filesystem>
#include <stdexcept>
#include <torch/torch.h>
#include "core/ode.h"                  // edm_heun_sample
#include "core/rng.h"                  // derive_seed, cpu_generator
#include "core/rng_streams.h"
#include "core/sampler.h"              // consistency_sample
#include "datasets/npz.h"              // write_npz
#include "core/util/progress.h"         // progress line with ETA
#include "distributed/communicator.h"  // all_gather of each round
#include "recipes/recipe.h"              // recipe_model_shape

namespace cm {
namespace {
constexpr uint64_t kNoiseStream = rng_stream::kSampleNoise, kLabelStream = rng_stream::kSampleLabel;
}  // namespace

torch::Tensor sample_noise(uint64_t seed, int64_t index, int64_t step, const std::vector<int64_t>& dims) {
  auto gen = cpu_generator(derive_seed(seed, kNoiseStream, static_cast<uint64_t>(index), static_cast<uint64_t>(step)));
  return torch::randn(dims, gen, torch::kFloat32);
}

int64_t sample_label(const SamplingOptions& opts, int64_t index, int64_t num_classes) {
  if (num_classes <= 0) return 0;
  switch (opts.labels) {
    case LabelMode::Balanced: return index % num_classes;
    case LabelMode::Fixed: return opts.fixed_class;
    case LabelMode::Random: break;
  }
  // A 64-bit hash modulo K: the bias is below K / 2^64.
  return static_cast<int64_t>(derive_seed(opts.seed, kLabelStream, static_cast<uint64_t>(index)) % static_cast<uint64_t>(num_classes));
}

torch::Tensor sample_noise_batch(uint64_t seed, int64_t begin, int64_t end, int64_t step, const std::vector<int64_t>& dims, torch::Device device) {
  std::vector<torch::Tensor> rows;
  rows.reserve(static_cast<size_t>(end - begin));
  for (int64_t i = begin; i < end; ++i) rows.push_back(sample_noise(seed, i, step, dims));
  return torch::stack(rows).to(device);
}

torch::Tensor sample_labels(const SamplingOptions& opts, int64_t begin, int64_t end, int64_t num_classes, torch::Device device) {
  auto labels = torch::empty({end - begin}, torch::kInt64);
  auto* l = labels.data_ptr<int64_t>();
  for (int64_t i = begin; i < end; ++i) l[i - begin] = sample_label(opts, i, num_classes);
  return labels.to(device);
}

IndexRange shard_range(int64_t count, int64_t rank, int64_t world) {
  if (world < 1 || rank < 0 || rank >= world) throw std::invalid_argument(fmt::format("shard_range: rank {} of {}", rank, world));
  return {count * rank / world, count * (rank + 1) / world};
}

torch::Tensor to_uint8_reference(const torch::Tensor& nchw) {
  return ((nchw.to(torch::kFloat32) + 1) * 127.5).clamp(0, 255).to(torch::kUInt8).permute({0, 2, 3, 1}).contiguous();
}

Sampler::Sampler(NetworkPtr net, Preconditioning p, ModelShape shape, SamplingOptions opts, torch::Device device)
    : net_(std::move(net)), p_(p), shape_(shape), opts_(std::move(opts)), device_(device) {
  if (opts_.count < 1) throw std::invalid_argument(fmt::format("the sample count must be >= 1, got {}", opts_.count));
  if (opts_.batch < 1) throw std::invalid_argument(fmt::format("the batch must be >= 1, got {}", opts_.batch));
  if (p_.kind != Preconditioning::Edm && opts_.sigmas.empty()) throw std::invalid_argument("no noise levels to sample with");
  if (shape_.num_classes > 0 && opts_.labels == LabelMode::Fixed && (opts_.fixed_class < 0 || opts_.fixed_class >= shape_.num_classes))
    throw std::invalid_argument(fmt::format("class {} is outside the model's classes 0..{}", opts_.fixed_class, shape_.num_classes - 1));
  net_->eval();  // no dropout
}

std::vector<int64_t> Sampler::output_dims() const {
  if (shape_.resolution > 0) return {shape_.resolution, shape_.resolution, shape_.channels};
  return {shape_.channels};
}

FloatSamples sample_floats(NetworkImpl& net, const Preconditioning& p, const ModelShape& shape, const SamplingOptions& opts,
                           int64_t begin, int64_t end, torch::Device device) {
  torch::NoGradGuard ng;
  std::vector<int64_t> dims = {shape.channels};
  if (shape.resolution > 0) dims.insert(dims.end(), {shape.resolution, shape.resolution});
  auto noise = [&](int64_t step) { return sample_noise_batch(opts.seed, begin, end, step, dims, device); };
  FloatSamples out;
  torch::Tensor labels;
  if (shape.num_classes > 0) {
    out.labels = sample_labels(opts, begin, end, shape.num_classes, torch::kCPU);
    labels = out.labels.to(device);
  }
  NetworkImpl* raw = &net;
  if (p.kind == Preconditioning::Edm) {
    DenoiserFn d = [raw, p](const torch::Tensor& x, const torch::Tensor& s, const torch::Tensor& l) { return precondition(*raw, p, x, s, l); };
    out.x = edm_heun_sample(d, noise(0), opts.edm_steps, p.range, labels);
  } else {
    const bool clip = opts.clip_denoised && shape.resolution > 0;
    ConsistencyFn f = [raw, p, clip](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& l) {
      auto d = precondition(*raw, p, x, t, l);
      return clip ? d.clamp(-1, 1) : d;
    };
    // A last level at sigma_min adds no noise, and with the boundary parameterization f(x, eps) = x exactly
    // (c_skip = 1, c_out = 0): the reference CLI's final ts index N-1 (ts = 0,22,39) costs no evaluation,
    // as in the reference sampler, which never evaluates its last ts. Two evaluations, not three.
    std::vector<double> sigmas = opts.sigmas;
    if (sigmas.size() > 1 && sigmas.back() == p.range.sigma_min && p.boundary_shift) sigmas.pop_back();
    out.x = consistency_sample(f, sigmas, noise, p.range, labels);
  }
  return out;
}

SampleSet Sampler::sample_batch(int64_t begin, int64_t end) const {
  FloatSamples f = sample_floats(*net_, p_, shape_, opts_, begin, end, device_);
  SampleSet out;
  out.labels = f.labels;
  out.samples = shape_.resolution > 0 ? to_uint8_reference(f.x.cpu()) : f.x.cpu().to(torch::kFloat32).contiguous();
  return out;
}

SampleSet Sampler::sample_range(IndexRange r) const {
  std::vector<torch::Tensor> xs, ls;
  for (int64_t b = r.begin; b < r.end; b += opts_.batch) {
    SampleSet part = sample_batch(b, std::min(r.end, b + opts_.batch));
    xs.push_back(part.samples);
    if (part.labels.defined()) ls.push_back(part.labels);
  }
  SampleSet out;
  if (!xs.empty()) out.samples = torch::cat(xs);
  if (!ls.empty()) out.labels = torch::cat(ls);
  return out;
}

IndexRange round_range(int64_t count, int64_t rank, int64_t world, int64_t batch, int64_t j) {
  const IndexRange s = shard_range(count, rank, world);
  const int64_t b = std::min(s.begin + j * batch, s.end);
  return {b, std::min(b + batch, s.end)};
}

int64_t round_count(int64_t count, int64_t world, int64_t batch) {
  const int64_t per_rank = (count + world - 1) / world;
  return (per_rank + batch - 1) / batch;
}

namespace {

torch::Tensor padded(const torch::Tensor& part, int64_t rows, const std::vector<int64_t>& dims, torch::ScalarType dtype) {
  std::vector<int64_t> shape = {rows};
  shape.insert(shape.end(), dims.begin(), dims.end());
  torch::Tensor t = torch::zeros(shape, dtype);
  if (part.defined() && part.size(0) > 0) t.narrow(0, 0, part.size(0)).copy_(part);
  return t;
}

}  // namespace

SampleSet sample_all(const Sampler& s, dist::Communicator* comm, bool progress) {
  const SamplingOptions& o = s.options();
  const int64_t world = comm ? comm->size() : 1, rank = comm ? comm->rank() : 0;
  data::Progress bar("samples", o.count, progress && rank == 0);
  if (world == 1) {
    std::vector<torch::Tensor> xs, ls;
    for (int64_t b = 0; b < o.count; b += o.batch) {
      SampleSet part = s.sample_range({b, std::min(o.count, b + o.batch)});
      xs.push_back(part.samples);
      if (part.labels.defined()) ls.push_back(part.labels);
      bar.add(part.size());
    }
    bar.finish();
    SampleSet out;
    out.samples = torch::cat(xs);
    if (!ls.empty()) out.labels = torch::cat(ls);
    return out;
  }
  const std::vector<int64_t> dims = s.output_dims();
  const torch::ScalarType dtype = s.shape().resolution > 0 ? torch::kUInt8 : torch::kFloat32;
  const bool labelled = s.shape().num_classes > 0;
  const int64_t rounds = round_count(o.count, world, o.batch);
  SampleSet out;
  if (rank == 0) {
    std::vector<int64_t> shape = {o.count};
    shape.insert(shape.end(), dims.begin(), dims.end());
    out.samples = torch::empty(shape, dtype);
    if (labelled) out.labels = torch::empty({o.count}, torch::kInt64);
  }
  const torch::Device cd = comm->device();  // NCCL gathers CUDA tensors, MPI CPU ones
  for (int64_t j = 0; j < rounds; ++j) {
    const IndexRange mine = round_range(o.count, rank, world, o.batch, j);
    SampleSet part = mine.size() > 0 ? s.sample_range(mine) : SampleSet{};
    torch::Tensor xs = comm->all_gather(padded(part.samples, o.batch, dims, dtype).to(cd), "samples").cpu();
    torch::Tensor ls;
    if (labelled) ls = comm->all_gather(padded(part.labels, o.batch, {}, torch::kInt64).to(cd), "labels").cpu();
    if (rank != 0) continue;
    for (int64_t r = 0; r < world; ++r) {
      const IndexRange rr = round_range(o.count, r, world, o.batch, j);
      if (rr.size() == 0) continue;
      out.samples.narrow(0, rr.begin, rr.size()).copy_(xs[r].narrow(0, 0, rr.size()));
      if (labelled) out.labels.narrow(0, rr.begin, rr.size()).copy_(ls[r].narrow(0, 0, rr.size()));
      bar.add(rr.size());
    }
  }
  bar.finish();
  return out;
}

ModelShape recipe_model_shape(const Recipe& r) {
  if (r.dataset_kind == "hdf5") {
    ConfigReader d(r.config, "dataset");
    if (d.has("resolution") && d.has("channels")) {
      ModelShape s;
      s.resolution = d.get_int("resolution", 0);
      s.channels = d.get_int("channels", 3);
      s.num_classes = r.class_cond ? d.get_int("num_classes", 0) : 0;
      if (!r.class_cond || d.has("num_classes")) return s;
    }
  }
  return build_data(r, 0, 1)->shape();
}

std::string write_sample_npz(const std::string& dir, const SampleSet& s) {
  if (!s.samples.defined()) throw std::invalid_argument("write_sample_npz: no samples");
  std::filesystem::create_directories(dir);
  std::string dims;
  for (auto d : s.samples.sizes()) dims += (dims.empty() ? "" : "x") + std::to_string(d);
  const std::string path = (std::filesystem::path(dir) / fmt::format("samples_{}.npz", dims)).string();
  std::vector<std::pair<std::string, torch::Tensor>> arrays = {{"arr_0", s.samples}};
  if (s.labels.defined()) arrays.emplace_back("arr_1", s.labels);
  data::write_npz(path, arrays);
  return path;
}

}  // namespace cm
