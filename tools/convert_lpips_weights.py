#!/usr/bin/env python3
"""Make the LPIPS weights file that core/lpips.h loads (`make_lpips`), from the two published parts:

  1. torchvision's ImageNet VGG16 weights (what piq 0.7.0 uses through torchvision.models.vgg16(pretrained=True)):
       https://download.pytorch.org/models/vgg16-397923af.pth
  2. the LPIPS per-channel layer weights, either
       piq's  https://github.com/photosynthesis-team/photosynthesis.metrics/releases/download/v0.4.0/lpips_weights.pt
              (a list of 5 tensors, what the reference consistency-models code used), or
       richzhang/PerceptualSimilarity's lpips/weights/v0.1/vgg.pth (keys lin{K}.model.1.weight).

    python3 tools/convert_lpips_weights.py --vgg vgg16-397923af.pth --lin lpips_weights.pt \
        --out ~/.cache/cm/lpips_vgg16.safetensors

Output names: features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias} (the 13 convolutions of
torchvision's vgg16().features) and lin.{0..4}.weight with shape [1, C, 1, 1], C = 64, 128, 256, 512, 512.
Needs torch (to unpickle the .pth files) and numpy; the output is written by tools/safetensors_np.py.
"""
import argparse
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402

CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
LIN_CHANNELS = [64, 128, 256, 512, 512]


def lin_weights(obj):
    if isinstance(obj, dict):
        found = {}
        for k, v in obj.items():
            m = re.fullmatch(r"lin(\d)\.model\.1\.weight", k)
            if m:
                found[int(m.group(1))] = v
        if sorted(found) != list(range(5)):
            sys.exit(f"--lin: expected keys lin0.model.1.weight .. lin4.model.1.weight, found {sorted(obj)[:10]}")
        return [found[k] for k in range(5)]
    if isinstance(obj, (list, tuple)) and len(obj) == 5:
        return list(obj)
    sys.exit(f"--lin: expected a list of 5 tensors (piq) or an LPIPS state dict, got {type(obj).__name__}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vgg", required=True, help="torchvision VGG16 state dict (.pth)")
    ap.add_argument("--lin", required=True, help="LPIPS layer weights (piq lpips_weights.pt or PerceptualSimilarity vgg.pth)")
    ap.add_argument("--out", required=True, help="output .safetensors")
    a = ap.parse_args()
    import torch

    vgg = torch.load(a.vgg, map_location="cpu")
    out = {}
    for i in CONV_INDICES:
        for p in ("weight", "bias"):
            k = f"features.{i}.{p}"
            if k not in vgg:
                sys.exit(f"--vgg: {k} missing; is this torchvision's vgg16 (not vgg16_bn / vgg19)?")
            out[k] = vgg[k].float().numpy()
    for k, w in enumerate(lin_weights(torch.load(a.lin, map_location="cpu"))):
        w = torch.as_tensor(w).float()
        if w.numel() != LIN_CHANNELS[k]:
            sys.exit(f"--lin: layer {k} has {w.numel()} weights, expected {LIN_CHANNELS[k]}")
        out[f"lin.{k}.weight"] = w.reshape(1, -1, 1, 1).numpy()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    safetensors_np.save(a.out, out, {"format": "cm-lpips-vgg16", "vgg": os.path.basename(a.vgg),
                                     "lin": os.path.basename(a.lin)})
    print(f"wrote {a.out}: {len(out)} tensors, {sum(v.size for v in out.values()):,} values")


if __name__ == "__main__":
    main()
