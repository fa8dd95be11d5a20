// Pillow-exact image resizing, and the two preprocessing recipes of the reference code built on it.
//
// Pillow's Image.resize (libImaging/Resample.c) is a separable convolution: for each output pixel the
// filter is centred at (x + 0.5) * scale, its support widened by the downscale factor, weights normalized
// to sum 1 and then rounded to 22-bit fixed point; the horizontal pass runs first into an 8-bit image
// (rounded and clipped), then the vertical pass. We follow the same arithmetic so converted datasets
// match what the reference preprocessing scripts produce (tests compare against Pillow itself).
#pragma once
#include <cstdint>
#include "datasets/image_codec.h"

namespace cm::data {

enum class ResampleFilter { box, bicubic };

// Image.resize((width, height), resample=filter) for 8-bit images of any channel count.
Image pillow_resize(const Image& in, int64_t width, int64_t height, ResampleFilter filter);

// Python 3's round() of a double: to nearest, ties to even.
int64_t py_round(double x);

// The ADM / consistency-models ImageNet preprocessing (cm/image_datasets.py center_crop_arr): halve with
// a BOX filter while the short side is at least 2 * size, BICUBIC-resize so the short side is `size`
// (sides rounded with Python's round), then crop the centre size x size.
Image center_crop_arr(const Image& in, int64_t size);

// The LSUN preprocessing of datasets/lsun_bedroom.py: one BOX resize by size / short side (sides
// int(round(...))), then the centre size x size crop.
Image lsun_resize_crop(const Image& in, int64_t size);

// Crop [y0, y0 + h) x [x0, x0 + w).
Image crop(const Image& in, int64_t y0, int64_t x0, int64_t h, int64_t w);

}  // namespace cm::data
