#!/usr/bin/env bash
# Fills launch/gpu/carry/ (ignored by git) with what launch/gpu/check.sh needs on a GPU machine without
# apt or network, and prints its size:
#   carry/debs/                 the Debian 12 packages (fetch-debs.sh)
#   carry/shared/fixtures/...   the reference-network fixtures the tests read from ../shared
#   carry/consistency_models/   the reference implementation's python package cm/ (for its CT step timing),
#                               exported from a git checkout or mirror of openai/consistency_models; not
#                               committed to this repository, only carried
#
#   bash launch/gpu/prepare.sh [--reference GIT_DIR_OR_CHECKOUT] [--shared DIR] [--no-debs]
# Defaults: --shared ../shared (beside the checkout), --reference $CM_REFERENCE_GIT.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
carry=$here/carry
ref=${CM_REFERENCE_GIT:-}
shared=$root/../shared
debs=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --reference) ref=$2; shift 2 ;;
    --shared) shared=$2; shift 2 ;;
    --no-debs) debs=0; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "prepare: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$carry"
[[ $debs == 1 ]] && bash "$here/fetch-debs.sh" "$carry/debs"

# Fixtures: only what the tests open (the .pt state dicts, .safetensors weights and io files, .tsv names).
if [[ -d "$shared/fixtures/reference-nets" ]]; then
  rm -rf "$carry/shared"; mkdir -p "$carry/shared/fixtures"
  cp -r "$shared/fixtures/reference-nets" "$carry/shared/fixtures/"
  chmod -R u+w "$carry/shared"
  echo "prepare: fixtures from $shared ($(du -sh "$carry/shared" | cut -f1))"
else
  echo "prepare: no fixtures at $shared/fixtures/reference-nets (the fixture tests will fail there)" >&2
fi

# The reference code: a bare mirror (git archive) or a checkout (copy of cm/).
if [[ -n "$ref" ]]; then
  rm -rf "$carry/consistency_models"; mkdir -p "$carry/consistency_models"
  if git --git-dir="$ref" rev-parse HEAD >/dev/null 2>&1; then
    git --git-dir="$ref" archive HEAD cm LICENSE | tar -x -C "$carry/consistency_models"
    git --git-dir="$ref" rev-parse HEAD >"$carry/consistency_models/COMMIT"
  elif [[ -d "$ref/cm" ]]; then
    cp -r "$ref/cm" "$carry/consistency_models/"; [[ -f "$ref/LICENSE" ]] && cp "$ref/LICENSE" "$carry/consistency_models/"
    (cd "$ref" && git rev-parse HEAD 2>/dev/null || echo unknown) >"$carry/consistency_models/COMMIT"
  else
    echo "prepare: --reference $ref is neither a git directory nor a checkout with cm/" >&2; exit 2
  fi
  echo "prepare: reference code $(cat "$carry/consistency_models/COMMIT") ($(du -sh "$carry/consistency_models" | cut -f1))"
else
  echo "prepare: no --reference given: the reference step will be skipped (git clone https://github.com/openai/consistency_models)"
fi
echo "prepare: $carry holds $(du -sb "$carry" | awk '{printf "%.1f MiB", $1 / 1048576}')"
