#!/usr/bin/env python3
"""Reference LPIPS in PyTorch, written from piq 0.7.0's LPIPS(replace_pooling=True) and the way
openai/consistency_models' karras_diffusion.py calls it, to check core/lpips.cpp independently.

    /usr/bin/python3 tools/lpips_reference.py WEIGHTS.safetensors INPUTS.safetensors OUT.safetensors [--no-resize]

WEIGHTS uses the names of core/lpips.h (features.N.weight/bias, lin.K.weight). INPUTS holds `x` and `y`,
[B, 3, H, W] images in [-1, 1]. --no-resize skips the resize to 224 px (core/lpips.h's resize = false). OUT receives `lpips` [B] (float32) and `layer{K}` [B], the per-layer terms.
Needs torch and numpy only (no torchvision, no piq): the VGG16 feature stack is rebuilt here with torchvision's
layer indices.
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
LPIPS_LAYERS = ["3", "8", "15", "22", "29"]  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
EPS = 1e-10


def vgg16_features():
    """torchvision.models.vgg16().features: conv-ReLU pairs and max-pools, same module indices."""
    layers, c = [], 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


def replace_pooling(module):
    """piq's ContentLoss.replace_pooling: every MaxPool2d becomes AvgPool2d(2, 2)."""
    out = module
    if isinstance(module, nn.MaxPool2d):
        out = nn.AvgPool2d(kernel_size=2, stride=2, padding=0)
    for name, child in module.named_children():
        out.add_module(name, replace_pooling(child))
    return out


def main(weights_path, inputs_path, out_path):
    w, _ = safetensors_np.load(weights_path)
    model = replace_pooling(vgg16_features())
    state = {k[len("features."):]: torch.from_numpy(v) for k, v in w.items() if k.startswith("features.")}
    model.load_state_dict(state)
    model.eval()
    lin = [torch.from_numpy(w[f"lin.{k}.weight"]) for k in range(5)]

    mean = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, -1, 1, 1)

    def get_features(t):
        t = (t - mean) / std
        feats = []
        for name, module in model._modules.items():
            t = module(t)
            if name in LPIPS_LAYERS:
                norm = torch.sqrt(torch.sum(t ** 2, dim=1, keepdim=True))
                feats.append(t / (norm + EPS))
        return feats

    io, _ = safetensors_np.load(inputs_path)
    out = {}
    for key in io:
        if not key.startswith("x."):
            continue
        case = key[2:]
        x, y = torch.from_numpy(io["x." + case]), torch.from_numpy(io["y." + case])
        resize = bool(io["resize." + case]) if "resize." + case in io else True
        # karras_diffusion.py: resize below 256 px, then map [-1, 1] to [0, 1] for piq.
        if resize and x.shape[-1] < 256:
            x = F.interpolate(x, size=224, mode="bilinear")
            y = F.interpolate(y, size=224, mode="bilinear")
        x, y = (x + 1) / 2.0, (y + 1) / 2.0
        with torch.no_grad():
            fx, fy = get_features(x), get_features(y)
            mse = nn.MSELoss(reduction="none")
            terms = [(mse(a, b) * wk).mean(dim=[2, 3]) for a, b, wk in zip(fx, fy, lin)]
            total = torch.cat(terms, dim=1).sum(dim=1)
        out["lpips." + case] = total.numpy().astype(np.float32)
        for k, v in enumerate(terms):
            out[f"layer{k}.{case}"] = v.sum(dim=1).numpy().astype(np.float32)
    safetensors_np.save(out_path, out)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
