#!/usr/bin/env bash
# The main job (README): install, build, convert Fashion-MNIST from the Debian package into HDF5 shards,
# and train the default recipe (fmnist28_cd: consistency distillation of the shipped EDM teacher into a
# 28x28 U-Net) with 2 MPI ranks on the CPU for about 10 minutes. It leaves runs/main/ with the run files,
# samples.png (one-step samples on the left, two-step on the right) and report.html (curves and pictures,
# `cm report`), prints FD_fmnist at one and two steps (`cm features --help`) and their paths. Extra
# arguments are passed to `cm train` as overrides (e.g. train.steps=100 for a quicker look). Run it again
# after an interruption to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
CM_BUILD_TARGET=cm bash launch/setup.sh

data=data/fashion-mnist28-train
if ! ./build/cm data verify "$data" >/dev/null 2>&1; then
  echo "main: converting Fashion-MNIST (/usr/share/datasets/fashion-mnist) to $data"
  ./build/cm data convert fashion-mnist /usr/share/datasets/fashion-mnist "$data" --shards 2 --overwrite
fi
launch/cm-mpirun -n 2 train fmnist28_cd run.dir=runs/main "$@"
./build/cm report runs/main >/dev/null
echo "main: one-step (left) and two-step (right) samples: $(pwd)/runs/main/samples.png"
/usr/bin/python3 - runs/main/final.json <<'PY' || true
import json, sys
f = json.load(open(sys.argv[1]))
if "fd_fmnist" in f:
    print(f"main: FD_fmnist of 2,000 samples against the training split (lower is better; README gives its scale): "
          f"one step {f['fd_fmnist_1step']:.2f}, two steps {f['fd_fmnist']:.2f}")
PY
echo "main: the run's page (open it in a browser): $(pwd)/runs/main/report.html"
