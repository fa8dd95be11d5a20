#include "recipes/eval/ref_stats.h"

#include <fmt/format.h>
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <torch/torch.h>
#include "datasets/archive.h"

namespace cm::data {
namespace {

torch::Tensor read_float_array(const ZipArchive& zip, const std::string& key) {
  const ZipEntry* e = zip.find(key + ".npy");
  if (!e) {
    std::string names;
    for (auto& x : zip.entries()) names += (names.empty() ? "" : ", ") + x.name;
    throw std::runtime_error(fmt::format("{}: no '{}' array (entries: {}); reference statistics need mu and sigma",
                                         zip.path(), key, names));
  }
  auto s = zip.open(*e);
  NpyHeader h = read_npy_header(*s);
  if (h.descr != "<f8" && h.descr != "<f4")
    throw std::runtime_error(fmt::format("{}: '{}' has dtype {}, expected float64 ('<f8') or float32 ('<f4')", zip.path(), key, h.descr));
  if (h.fortran_order) throw std::runtime_error(fmt::format("{}: '{}' is in Fortran order, expected C order", zip.path(), key));
  const auto dtype = h.descr == "<f8" ? torch::kFloat64 : torch::kFloat32;
  auto t = torch::empty(h.shape, torch::TensorOptions().dtype(dtype));
  s->read_exact(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size(), fmt::format("'{}' data", key));
  return t.to(torch::kFloat64);
}

}  // namespace

FeatureStats read_reference_stats(const std::string& path) {
  ZipArchive zip(path);
  FeatureStats st;
  st.mu = read_float_array(zip, "mu");
  st.sigma = read_float_array(zip, "sigma");
  if (st.mu.dim() != 1 || st.sigma.dim() != 2 || st.sigma.size(0) != st.mu.size(0) || st.sigma.size(1) != st.mu.size(0))
    throw std::runtime_error(fmt::format("{}: mu {} and sigma {} do not fit together (need [D] and [D, D])", path,
                                         c10::str(st.mu.sizes()), c10::str(st.sigma.sizes())));
  // A covariance is finite, symmetric and positive semi-definite; anything else gives a number that
  // looks like a FID and means nothing (the Fréchet formula takes a matrix square root of sigma).
  if (!torch::isfinite(st.mu).all().item<bool>() || !torch::isfinite(st.sigma).all().item<bool>())
    throw std::runtime_error(fmt::format("{}: mu or sigma holds nan or inf", path));
  const double scale = std::max(st.sigma.abs().max().item<double>(), 1e-300);
  const double asym = (st.sigma - st.sigma.t()).abs().max().item<double>();
  if (asym > 1e-6 * scale)
    throw std::runtime_error(fmt::format("{}: sigma is not symmetric (max |sigma - sigma^T| = {:.3g}, max |sigma| = {:.3g}): not a "
                                         "covariance matrix", path, asym, scale));
  const auto eig = torch::linalg::eigvalsh(st.sigma, "L");
  const double lo = eig.min().item<double>(), hi = eig.max().item<double>();
  if (lo < -1e-6 * std::max(hi, scale))
    throw std::runtime_error(fmt::format("{}: sigma is not positive semi-definite (smallest eigenvalue {:.4g}, largest {:.4g}): not a "
                                         "covariance matrix", path, lo, hi));
  return st;
}

}  // namespace cm::data
