#!/usr/bin/env python3
"""Export the network of an NVlabs/edm snapshot pickle (network-snapshot-*.pkl, e.g. the CIFAR-10 VE teacher
edm-cifar10-32x32-uncond-ve.pkl) as safetensors with SongUNet's parameter names, for `--arch ncsnpp`.

EDM pickles hold Python classes of EDM's own code (dnnlib, torch_utils, training.networks), so unpickling
needs a checkout of https://github.com/NVlabs/edm on the Python path; nothing else of EDM is used:

    PYTHONPATH=/path/to/edm python3 tools/edm_pickle_to_safetensors.py edm-cifar10-32x32-uncond-ve.pkl \
        --out edm_cifar10_ve.safetensors

The snapshot's `ema` network is a preconditioning wrapper (VEPrecond / EDMPrecond ...) around the UNet in
its `model` attribute; the UNet's state dict is written (names such as enc.32x32_conv.weight). EDM's
CIFAR-10 models were trained with augmentation labels, so they carry map_augment.weight: build the network
with model.augment_dim = 9 to load them. The wrapper's settings (sigma_min, sigma_max, sigma_data) are
stored in the file's metadata.
"""
import argparse
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pickle", help="EDM network snapshot (.pkl)")
    ap.add_argument("--out", required=True, help="output .safetensors")
    ap.add_argument("--key", default="ema", help="entry of the snapshot to export (default: ema)")
    a = ap.parse_args()
    try:
        import dnnlib  # noqa: F401  (EDM's package; the pickle refers to it)
    except ImportError:
        sys.exit("cannot import EDM's code: put a checkout of https://github.com/NVlabs/edm on PYTHONPATH")
    with open(a.pickle, "rb") as f:
        snapshot = pickle.load(f)
    if a.key not in snapshot:
        sys.exit(f"{a.pickle}: no '{a.key}' entry (entries: {', '.join(snapshot)})")
    wrapper = snapshot[a.key]
    unet = getattr(wrapper, "model", wrapper)
    tensors = {k: v.detach().float().cpu().numpy() for k, v in unet.state_dict().items()}
    meta = {"source": os.path.basename(a.pickle), "wrapper": type(wrapper).__name__, "network": type(unet).__name__}
    for attr in ("sigma_min", "sigma_max", "sigma_data", "label_dim", "img_resolution", "img_channels"):
        if hasattr(wrapper, attr):
            meta[attr] = str(getattr(wrapper, attr))
    safetensors_np.save(a.out, tensors, meta)
    print(f"wrote {a.out}: {len(tensors)} tensors of {meta['network']} ({meta['wrapper']})")


if __name__ == "__main__":
    main()
