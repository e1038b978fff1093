#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine with Python >= 3.11: the Fashion-MNIST package
# (where apt is available), a virtual environment in .venv, and gati_jax with its dev extra.
# GATI_CUDA=1 installs the cuda12 extra as well (JAX with CUDA 12, for an NVIDIA GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  as_root=""
  [ "$(id -u)" = 0 ] || as_root="sudo"
  if [ -z "$as_root" ] || command -v sudo >/dev/null 2>&1; then
    $as_root apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { $as_root apt-get update -q >/dev/null && $as_root apt-get install -y -q dataset-fashion-mnist; }
  else
    echo "setup: cannot install dataset-fashion-mnist (not root, no sudo); see README" >&2
  fi
fi

extras="dev"
if [ "${GATI_CUDA:-0}" = 1 ]; then extras="dev,cuda12"; fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
# Reinstall only when the package definition or the extras changed since the last set-up.
stamp=.venv/.gati_jax-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) extras=$extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  if [ "$extras" = dev ] && [ -f "$stamp" ] && grep -q cuda12 "$stamp"; then
    # Back from CUDA to the CPU: without its plugin JAX no longer looks for a GPU.
    .venv/bin/python -m pip uninstall -q -y jax-cuda12-plugin jax-cuda12-pjrt
  fi
  .venv/bin/python -m pip install -q -e ".[$extras]"
  echo "$want" > "$stamp"
fi
