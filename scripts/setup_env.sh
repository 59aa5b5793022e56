#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the pinned stack.
#
# mmcv 2.1.0 ships as source only and takes 20-40 minutes to compile its ops on 2 cores,
# so its wheel is built once and cached outside the clone, keyed by every version that
# affects the binary. Later set-ups on the same machine install it in seconds.
#
# Every package is installed with `-c constraints.txt`, the exact versions of the two README
# commands (setup.cfg states the supported ranges).
#
# Environment knobs: PYTHON (interpreter used to create the venv), DINAT_VENV (venv path,
# default .venv in the repository), DINAT_WHEEL_CACHE (wheel cache directory).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

PYTHON=${PYTHON:-python3}
VENV=${DINAT_VENV:-$root/.venv}
CONSTRAINTS=$root/constraints.txt
# These three need special install steps, so their versions are read from the constraints.
pin() { sed -n "s/^$1==\([^ ]*\)$/\1/Ip" "$CONSTRAINTS"; }
TORCH_VERSION=$(pin torch)
MMCV_VERSION=$(pin mmcv)
NATTEN_VERSION=$(pin natten)
[ -n "$TORCH_VERSION" ] && [ -n "$MMCV_VERSION" ] && [ -n "$NATTEN_VERSION" ] \
  || { echo "[setup] FAILED: could not read the torch/mmcv/natten pins from $CONSTRAINTS" >&2; exit 1; }
# mmcv's setup.py imports pkg_resources APIs that setuptools>=70 dropped; used for its build only.
MMCV_BUILD_SETUPTOOLS='setuptools<70'

step() { printf '\n[setup] %s\n' "$*"; }
fail() { printf '\n[setup] FAILED at step: %s\n' "$*" >&2; exit 1; }

step "python interpreter ($PYTHON)"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 9), sys.version' \
  || fail "python >= 3.9 is required (set PYTHON=/path/to/python3)"

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV" || fail "creating the virtual environment (is the venv module installed?)"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS")

stamp="$VENV/.dinat-setup-stamp"
want_stamp=$(cat "$CONSTRAINTS" setup.cfg scripts/setup_env.sh third_party/panopticapi/pyproject.toml \
  third_party/panopticapi/panopticapi/*.py | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] \
   && "$PY" -c 'import dinat_backbone, mmcv.ops, mmdet, mmseg, panopticapi.evaluation' 2>/dev/null; then
  step "environment up to date ($VENV)"
  exit 0
fi

step "torch==$TORCH_VERSION (installed first and pinned, so nothing pulls a CUDA build)"
"${PIP[@]}" "torch==$TORCH_VERSION" wheel ninja || fail "installing torch==$TORCH_VERSION"

pyver=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
cache=${DINAT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dinat-backbone/wheels}
mmcv_dir="$cache/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$pyver-$(uname -m)"
if ! ls "$mmcv_dir"/mmcv-*.whl >/dev/null 2>&1; then
  step "building mmcv==$MMCV_VERSION with ops (once per machine, 20-40 min on 2 cores) into $mmcv_dir"
  mkdir -p "$mmcv_dir.tmp"
  "$PY" -m pip install --disable-pip-version-check -q "$MMCV_BUILD_SETUPTOOLS" 2>/dev/null || fail "installing $MMCV_BUILD_SETUPTOOLS for the mmcv build"
  # --no-cache-dir: pip would also keep the build in its own shared wheel cache, under a name
  # without the torch version, and reuse it for any later `pip install mmcv` of another torch
  # (mmcv.ops then fails to import). The build lives in $mmcv_dir only, keyed by torch.
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} FORCE_CUDA=0 \
    "$PY" -m pip wheel --disable-pip-version-check --no-cache-dir --no-build-isolation --no-deps \
    -w "$mmcv_dir.tmp" "mmcv==$MMCV_VERSION" || fail "building mmcv==$MMCV_VERSION (see the compiler output above)"
  rm -rf "$mmcv_dir" && mv "$mmcv_dir.tmp" "$mmcv_dir"
fi
step "mmcv==$MMCV_VERSION from $mmcv_dir"
"${PIP[@]}" "$mmcv_dir"/mmcv-*.whl || fail "installing the cached mmcv wheel"

# Always, also after an interrupted build: the packages below need today's setuptools (the
# vendored panopticapi declares an SPDX licence string, which needs setuptools >= 77).
step "setuptools as constraints.txt pins it (the mmcv build needed an older one)"
"${PIP[@]}" setuptools || fail "restoring setuptools from constraints.txt"

step "natten==$NATTEN_VERSION (no CUDA library on CPU machines)"
"${PIP[@]}" --no-build-isolation "natten==$NATTEN_VERSION" || fail "installing natten==$NATTEN_VERSION"

step "panopticapi (vendored in third_party/: mmdet's COCO panoptic dataset and metric import it)"
"${PIP[@]}" --no-build-isolation ./third_party/panopticapi || fail "installing third_party/panopticapi"

step "dinat_backbone with the mmdet, mmseg and test extras (versions from constraints.txt)"
"${PIP[@]}" --no-build-isolation -e ".[tests]" || fail "installing dinat_backbone"

step "compiling the CPU neighbourhood-attention kernels (once per source and toolchain)"
"$PY" -m dinat_backbone.ops.build || fail "building the CPU kernels (see the compiler output above)"

step "checking the installed stack"
"$PY" - <<'PY' || fail "import check of the installed stack"
import torch, mmcv, mmengine, mmdet, mmseg, natten
import panopticapi.evaluation  # mmdet's COCO panoptic metric
from mmcv.ops import nms, roi_align  # compiled ops must be present
import dinat_backbone
print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, "
      f"mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, natten {natten.__version__}")
PY
step "checking that the environment is exactly constraints.txt (pip check, every version pinned)"
"$PY" -m pip check --disable-pip-version-check || fail "pip check"
"$PY" - "$CONSTRAINTS" <<'PY' || fail "comparing the installed packages with constraints.txt"
import re, sys
from importlib.metadata import distributions
norm = lambda name: re.sub(r'[-_.]+', '-', name).lower()
pins = {}
for line in open(sys.argv[1]):
    line = line.split('#')[0].strip()
    if line:
        name, version = line.split('==')
        pins[norm(name)] = version
own = {'pip', 'dinat-backbone'}  # the venv's installer and this project
off = sorted(f'{d.metadata["Name"]}=={d.version} (constraints.txt: {pins.get(norm(d.metadata["Name"]), "not listed")})'
             for d in distributions() if norm(d.metadata['Name']) not in own
             and pins.get(norm(d.metadata['Name'])) != d.version.split('+')[0])
if off:
    sys.exit('not as constraints.txt pins them: ' + ', '.join(off))
PY
echo "$want_stamp" > "$stamp"
step "done: activate with 'source $VENV/bin/activate'"
