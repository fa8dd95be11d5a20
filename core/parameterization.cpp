// Consistency / EDM preconditioning (see parameterization.h).
#include "core/parameterization.h"

#include <fmt/format.h>
#include <stdexcept>
#include <torch/torch.h>

namespace cm {

NoiseLabel parse_noise_label(const std::string& s) {
  if (s == "adm") return NoiseLabel::Adm;
  if (s == "log") return NoiseLabel::Log;
  if (s == "ve")
    throw std::invalid_argument(
        "noise label convention 've' (ln(sigma / 2)) was removed: it is EDM's VEPrecond label, whose c_skip = 1, c_out = sigma, "
        "c_in = 1 this project does not implement; EDM's released edm-cifar10-32x32-uncond-ve.pkl is an EDMPrecond (config F) "
        "network and takes 'log' (ln(sigma) / 4)");
  throw std::invalid_argument(fmt::format("noise label convention '{}' is not one of: adm, log", s));
}

std::string to_string(NoiseLabel n) {
  switch (n) {
    case NoiseLabel::Adm: return "adm";
    case NoiseLabel::Log: return "log";
  }
  return "?";
}

torch::Tensor noise_labels(const torch::Tensor& t, NoiseLabel kind) {
  switch (kind) {
    case NoiseLabel::Adm: return 1000.0 * 0.25 * torch::log(t + 1e-44);
    case NoiseLabel::Log: return 0.25 * torch::log(t);
  }
  throw std::logic_error("noise_labels: bad kind");
}

Scalings consistency_scalings(const torch::Tensor& t, const NoiseRange& r, bool boundary_shift) {
  const double sd = r.sigma_data, eps = boundary_shift ? r.sigma_min : 0.0;
  Scalings s;
  auto shifted = t - eps;
  s.c_skip = (sd * sd) / (shifted * shifted + sd * sd);
  s.c_out = shifted * sd / torch::sqrt(t * t + sd * sd);
  s.c_in = 1.0 / torch::sqrt(t * t + sd * sd);
  return s;
}

Scalings edm_scalings(const torch::Tensor& sigma, const NoiseRange& r) {
  const double sd = r.sigma_data;
  Scalings s;
  s.c_skip = (sd * sd) / (sigma * sigma + sd * sd);
  s.c_out = sigma * sd / torch::sqrt(sigma * sigma + sd * sd);
  s.c_in = 1.0 / torch::sqrt(sigma * sigma + sd * sd);
  return s;
}

torch::Tensor precondition(NetworkImpl& net, const Preconditioning& p, const torch::Tensor& x, const torch::Tensor& t,
                           const torch::Tensor& labels) {
  auto tt = t.to(x.scalar_type());
  Scalings s = p.kind == Preconditioning::Consistency ? consistency_scalings(tt, p.range, p.boundary_shift)
                                                      : edm_scalings(tt, p.range);
  const int64_t nd = x.dim();
  auto out = net.forward(append_dims(s.c_in, nd) * x, noise_labels(tt, p.label), labels);
  return append_dims(s.c_skip, nd) * x + append_dims(s.c_out, nd) * out;
}

DenoiserFn edm_denoiser(NetworkPtr net, Preconditioning p) {
  p.kind = Preconditioning::Edm;
  return [net, p](const torch::Tensor& x, const torch::Tensor& sigma, const torch::Tensor& labels) {
    return precondition(*net, p, x, sigma, labels);
  };
}

}  // namespace cm
