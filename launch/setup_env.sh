#!/usr/bin/env bash
# Installs what dstrain needs to build and test on a Debian/Ubuntu machine, and nothing twice.
#   - Debian packages (compilers' libraries: MPI, HDF5, Boost.Program_options, toml++, liburing, ...)
#   - a Python venv outside the clone with torch==2.11.0 (LibTorch) and the reference peers
#     (transformers, safetensors, numpy) used by tests.
# The venv lives in $DSTRAIN_VENV (default ~/.cache/dstrain/venv) so fresh clones reuse it.
# Prints the venv path on its last line.
set -euo pipefail

VENV="${DSTRAIN_VENV:-$HOME/.cache/dstrain/venv}"
TORCH_VERSION="2.11.0"
DEB_PACKAGES=(build-essential cmake ninja-build ccache pkg-config python3-venv
  openmpi-bin libopenmpi-dev libhdf5-dev libboost-program-options-dev libtomlplusplus-dev
  liburing-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev fio clang clang-format
  libpcre2-dev libsentencepiece-dev libicu-dev)
PY_PACKAGES=("torch==${TORCH_VERSION}" "numpy" "transformers" "safetensors" "h5py" "peft" "tensorboard" "sentencepiece")

say() { echo "[setup] $*" >&2; }

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
else
  say "Debian packages present"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating venv $VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.dstrain-deps"
want="${PY_PACKAGES[*]}"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  say "installing into $VENV: $want (torch is large; this happens once)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}" >&2
  echo "$want" > "$stamp"
else
  say "Python packages present in $VENV"
fi
echo "$VENV"
