#!/usr/bin/env bash
# The test command (README, .ci/run): install, build, and run the whole suite with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
cd "${CM_BUILD_DIR:-build}"
# Tests run one at a time: several of them start MPI jobs that use both cores.
ctest --output-on-failure --timeout 900 "$@"
