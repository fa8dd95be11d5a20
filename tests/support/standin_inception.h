// A stand-in for inception-2015-12-05.pt: a TorchScript module built in the test with the real file's
// calling convention (forward(images, return_features=..., no_output_bias=...), uint8 [N, 3, H, W] in),
// whose features are a fixed projection of pooled pixels, so expected values can be computed without it.
// Features: per channel the mean, the mean of the top half and the mean square of the pixels / 255
// ([N, 9]), minus 0.5, times proj [9, 6]. Probabilities: softmax(features cls (+ bias unless no_output_bias)).
#pragma once
#include <string>
#include <torch/script.h>
#include <torch/torch.h>
#include "core/rng.h"

namespace cm::test {

inline const char* kStandinForward = R"(
def forward(self, x, return_features: bool = False, use_fp16: bool = False, no_output_bias: bool = False):
    x = x.float() / 255.0
    h2 = x.size(2) // 2
    f = torch.cat([x.mean(dim=[2, 3]), x[:, :, 0:h2, :].mean(dim=[2, 3]), (x * x).mean(dim=[2, 3])], 1)
    feat = torch.mm(f - 0.5, self.proj)
    if return_features:
        return feat
    logits = torch.mm(feat, self.cls)
    if not no_output_bias:
        logits = logits + self.bias
    return torch.softmax(logits, 1)
)";

inline torch::Tensor standin_projection() {
  auto g = cpu_generator(11);
  return torch::randn({9, 6}, g, torch::kFloat32) * 10;
}

// Writes the module to `path`; `uniform` makes every prediction uniform (IS = 1).
inline std::string save_standin_inception(const std::string& path, bool uniform) {
  torch::jit::Module m("FakeInception");
  m.register_buffer("proj", standin_projection());
  auto g = cpu_generator(12);
  m.register_buffer("cls", uniform ? torch::zeros({6, 10}) : torch::randn({6, 10}, g) * 0.1);
  auto bias = torch::zeros({10});
  bias[0] = 100.0;  // must be left out for IS: with it every image would be class 0 (IS ~ 1)
  m.register_buffer("bias", bias);
  m.define(kStandinForward);
  m.save(path);
  return path;
}

}  // namespace cm::test
