// The consistency-model and EDM preconditionings that turn a raw network F into f_theta(x, t) or D(x, sigma)
// (spec section 2), and the noise-label conventions of the two network families.
#pragma once
#include <functional>
#include <string>
#include <torch/types.h>
#include "core/karras.h"
#include "core/network.h"

namespace cm {

// c_noise(t): "adm" = 1000 * 0.25 * ln(t + 1e-44) (ADM UNet, positional embedding);
// "log" = 0.25 * ln(t) (NCSN++ with Fourier embedding, CIFAR-10 JAX code and EDM's EDMPrecond - also EDM's
// released edm-cifar10-32x32-uncond-ve.pkl, which is config F: --arch=ncsnpp with the default --precond=edm;
// "ve" in its name is the architecture). There is no "ve" (ln(t / 2)): that label belongs to EDM's
// VEPrecond, which also has c_skip = 1, c_out = sigma, c_in = 1, and the label is shared with the student.
enum class NoiseLabel { Adm, Log };
NoiseLabel parse_noise_label(const std::string& s);  // throws listing the choices (and explains "ve")
std::string to_string(NoiseLabel n);
torch::Tensor noise_labels(const torch::Tensor& t, NoiseLabel kind);

struct Scalings {
  torch::Tensor c_skip, c_out, c_in;
};
// Consistency parameterization. With boundary_shift (the default and the paper's form) c_skip(eps) = 1 and
// c_out(eps) = 0 exactly; without it the EDM scalings are used unshifted (an ablation/deliberate-bug knob).
Scalings consistency_scalings(const torch::Tensor& t, const NoiseRange& r, bool boundary_shift = true);
Scalings edm_scalings(const torch::Tensor& sigma, const NoiseRange& r);

// x -> denoised estimate, for teachers and exact toy denoisers: D(x, sigma[B], labels).
using DenoiserFn = std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& sigma, const torch::Tensor& labels)>;

struct Preconditioning {
  enum Kind { Consistency, Edm } kind = Consistency;
  NoiseRange range;
  NoiseLabel label = NoiseLabel::Adm;
  bool boundary_shift = true;
};

// out = c_skip x + c_out F(c_in x, c_noise(t), labels), computed with t in x's dtype.
torch::Tensor precondition(NetworkImpl& net, const Preconditioning& p, const torch::Tensor& x, const torch::Tensor& t,
                           const torch::Tensor& labels);

// An EDM denoiser (teacher) as a DenoiserFn around a network; the network must outlive the function.
DenoiserFn edm_denoiser(NetworkPtr net, Preconditioning p);

}  // namespace cm
