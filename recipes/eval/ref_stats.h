// Reference statistics for FID from the files the community publishes:
//  - the guided-diffusion / consistency-models evaluator's reference batches VIRTUAL_*.npz
//    (e.g. VIRTUAL_imagenet64_labeled.npz): mu [2048] and sigma [2048, 2048] float64, plus arr_0 images
//    (uint8 NHWC) and spatial statistics (mu_s, sigma_s) that FID does not use;
//  - EDM's dataset statistics (e.g. cifar10-32x32.npz): mu and sigma only.
// Both are numpy .npz archives (zip of .npy files, stored or deflated).
#pragma once
#include <string>
#include "core/metrics/fid.h"

namespace cm::data {

// Reads `mu` and `sigma` (float64 or float32, little-endian, C order) of an .npz file. Throws naming the
// file and what is missing or malformed (shapes must be [D] and [D, D]).
FeatureStats read_reference_stats(const std::string& path);

}  // namespace cm::data
