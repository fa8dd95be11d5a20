// Pictures for people: PNG files (libpng, see core/io/png.h), image grids of samples, and scatter plots of
// 2-D samples over data.
#pragma once
#include <string>
#include <torch/types.h>

namespace cm {

// Writes a uint8 [H, W, C] tensor (C = 1, 3 or 4) as PNG, atomically. Throws naming the path.
void write_png(const std::string& path, const torch::Tensor& hwc_uint8);
// Reads a PNG (such as one written by write_png) back to uint8 [H, W, C], alpha kept; for tests and tools.
torch::Tensor read_png(const std::string& path);

// float images in [-1, 1] -> uint8 as the reference does: clamp(((x + 1) * 127.5).round(), 0, 255).
torch::Tensor to_uint8(const torch::Tensor& x);
// [N, C, H, W] in [-1, 1] -> [rows*(H+pad)+pad, cols*(W+pad)+pad, 3] uint8 grid.
torch::Tensor image_grid(const torch::Tensor& nchw, int64_t cols, int64_t pad = 2);
// Two point sets [N, 2] drawn in one square picture: data in grey, samples in red; `extent` is the half
// width of the plotted square. `title` is ignored (no font rendering) but kept for the caller's clarity.
torch::Tensor scatter_plot(const torch::Tensor& data, const torch::Tensor& samples, int64_t size = 512, double extent = 1.6);
// Side-by-side concatenation of pictures of equal height.
torch::Tensor hconcat(const std::vector<torch::Tensor>& hwc, int64_t gap = 8);

}  // namespace cm
