// Zero-shot image editing with a consistency model (`cm edit`; spec section 9, the paper's Algorithm 4).
//
// Algorithm 4 restores the known part of a reference image y after every consistency step:
//   y <- A^-1[(A y) * Omega]                          (the known coordinates only)
//   x <- f(y + T z_0, T);  x <- A^-1[(A y) * Omega + (A x) * (1 - Omega)]
//   for each later tau:  x <- f(x + sqrt(tau^2 - eps^2) z_i, tau);  x <- A^-1[(A y) * Omega + (A x) * (1 - Omega)]
// with Omega = 1 on the coordinates of A that are known. Every A the paper and the reference code use
// is orthogonal (identity for inpainting, a 3x3 colour basis whose first vector is the luma weights for
// colorization, a patch basis whose first vector is the constant for super-resolution), so
// A^-1[(A y) Omega + (A x)(1 - Omega)] = x + P (y - x), with P the orthogonal projection onto the known
// coordinates. That is what KnownPart computes, in float64, without building A: P is the pixel mask
// (inpainting), the projection onto the luma direction at each pixel (colorization), or the block
// average (super-resolution). Consequences the tests check: inpainted images keep the known pixels
// bit for bit, colorized ones have exactly the input's luma, super-resolved ones box-downsample exactly
// to the low-resolution input (up to float32 rounding).
//
// Like the reference's iterative_* functions, each denoised x is clamped to [-1, 1] before the known part
// is restored (clip = false, `cm edit --no-clip`, leaves the estimates raw, as `cm sample --no-clip`). The noise of image i at step s comes from (seed, i, s) as in `cm sample`.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include <torch/types.h>
#include "core/sampler.h"  // ConsistencyFn

namespace cm {

// The luma weights of colorization (ITU-R BT.601, as the reference: 0.2989 R + 0.5870 G + 0.1140 B).
torch::Tensor luma(const torch::Tensor& nchw);  // [N, 3, H, W] -> [N, 1, H, W]
// Mean over factor x factor blocks: [N, C, H, W] -> [N, C, H / f, W / f] (H, W multiples of f).
torch::Tensor box_downsample(const torch::Tensor& nchw, int64_t factor);

class KnownPart {
 public:
  enum Kind { Pixels, Luma, Blocks };
  // Inpainting: `known` is 1 where a pixel is kept from y, 0 where it is generated; [H, W], [1|N, 1|C, H, W].
  static KnownPart pixels(const torch::Tensor& known);
  static KnownPart luma();                  // colorization: the luma of y is kept, the colour generated
  static KnownPart blocks(int64_t factor);  // super-resolution: the factor x factor block means of y are kept

  // P y: y reduced to its known part (what the reference shows as the input).
  torch::Tensor project(const torch::Tensor& y) const;
  // x + P (y - x) = A^-1[(A y) Omega + (A x)(1 - Omega)]: x with y's known part.
  torch::Tensor impose(const torch::Tensor& x, const torch::Tensor& y) const;
  Kind kind() const { return kind_; }

 private:
  Kind kind_ = Pixels;
  torch::Tensor mask_;  // Pixels: bool, broadcastable to the images
  int64_t factor_ = 1;
};

// Noise z_s for step s of every image in the batch, standard normal, shaped like the images.
using EditNoise = std::function<torch::Tensor(int64_t step)>;

// Algorithm 4. `sigmas` decreasing, sigmas[0] = T (= r.sigma_max): x <- f(P y + T z_0, T), then the later
// levels as above; the known part of y is imposed after every step (also after the last).
torch::Tensor edit_known(const ConsistencyFn& f, const KnownPart& known, const torch::Tensor& y, const std::vector<double>& sigmas,
                         const EditNoise& noise, const NoiseRange& r, const torch::Tensor& labels, bool clip = true);

// Denoising from an intermediate noise level, and stroke-guided generation (SDEdit with a consistency
// model): x <- f(x_start, sigmas[0]) for an x_start at noise level sigmas[0] (a noisy image, or a stroke
// painting plus sigmas[0] z_0: see add_noise), then multistep through the later sigmas. Clamped to [-1, 1].
torch::Tensor denoise_from(const ConsistencyFn& f, const torch::Tensor& x_start, const std::vector<double>& sigmas, const EditNoise& noise,
                           const NoiseRange& r, const torch::Tensor& labels, bool clip = true);

// Spherical interpolation between two noise tensors of the same shape, alpha in [0, 1] (alpha = 0 gives
// z0, 1 gives z1; the angle is over all elements of one sample: z0, z1 are single samples without a batch
// dimension or with a batch of 1).
torch::Tensor slerp(const torch::Tensor& z0, const torch::Tensor& z1, double alpha);

// Inpainting masks by name (1 = known), [H, W] float: "center" (the middle half square is generated),
// "left", "right", "top", "bottom" (that half is generated), "stripes" (every other vertical band of
// width H / 8 is generated). Throws listing the names for any other.
torch::Tensor preset_mask(const std::string& name, int64_t height, int64_t width);
const std::vector<std::string>& preset_mask_names();

}  // namespace cm
