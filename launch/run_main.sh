#!/usr/bin/env bash
# The main job (README): install, build, convert Fashion-MNIST from the Debian package into HDF5 shards,
# and train the default recipe (fmnist_ict_mlp: improved consistency training) with 2 MPI ranks on the CPU
# for a few minutes. It leaves runs/main/ with the run files and samples.png (one-step samples on the
# left, two-step on the right) and report.html (curves and pictures, `cm report`), and prints their paths. Extra arguments are passed to `cm train` as
# overrides (e.g. train.steps=300 for a quicker look). Run it again after an interruption to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
CM_BUILD_TARGET=cm bash launch/setup.sh

data=data/fashion-mnist28-train
if ! ./build/cm data verify "$data" >/dev/null 2>&1; then
  echo "main: converting Fashion-MNIST (/usr/share/datasets/fashion-mnist) to $data"
  ./build/cm data convert fashion-mnist /usr/share/datasets/fashion-mnist "$data" --shards 2 --overwrite
fi
launch/cm-mpirun -n 2 train fmnist_ict_mlp run.dir=runs/main "$@"
./build/cm report runs/main >/dev/null
echo "main: one-step (left) and two-step (right) samples: $(pwd)/runs/main/samples.png"
echo "main: the run's page (open it in a browser): $(pwd)/runs/main/report.html"
