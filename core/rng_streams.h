// Every random stream of the project, in one registry. A draw is seeded with derive_seed(seed, stream, ...)
// (core/rng.h); two draws that must be independent use two different streams, so a new draw takes a new
// number here and none is reused. The values are part of what a run computes: changing one changes every
// result that uses it (and the reference-equivalence fixtures' agreement), so they never change.
#pragma once
#include <cstdint>

namespace cm::rng_stream {

inline constexpr uint64_t kInit = 0;       // network initialisation (the default generator at start-up)
inline constexpr uint64_t kToyData = 1;    // the toy mixtures' points (datasets/toy2d.cpp)
inline constexpr uint64_t kNoise = 3;      // the training noise z, per global row
inline constexpr uint64_t kPairIndex = 4;  // the consistency pair index n, per global row
inline constexpr uint64_t kSigma = 5;      // EDM's lognormal sigma, per global row
inline constexpr uint64_t kDropout = 7;    // dropout masks, per (step, rank, micro-batch)
inline constexpr uint64_t kPictureData = 21;   // the data points drawn beside toy sample pictures
inline constexpr uint64_t kQualityData = 31;   // toy quality figures: the data set compared with samples
inline constexpr uint64_t kQualityFloor = 32;  // ... and the second data set of the floor
inline constexpr uint64_t kPictureNoise = 99;  // the noise seed of the trainer's sample pictures (sample_model)
inline constexpr uint64_t kQualityNoise = 7;   // the noise seed of the toy quality figures' samples (sample_model)
inline constexpr uint64_t kSampleLabel = 0x5a4c;  // cm sample: sample i's class label
inline constexpr uint64_t kSampleNoise = 0x5a4d;  // cm sample: sample i's noise

}  // namespace cm::rng_stream
