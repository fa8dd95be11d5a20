#!/usr/bin/env bash
# The main job (README): install, build, and train the default recipe, leaving a run directory with
# metrics and a picture of the samples. Extra arguments are passed to `cm train` as overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
CM_BUILD_TARGET=cm bash launch/setup.sh
./build/cm train toy_ct run.dir=runs/main "$@"
