#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine with Python >= 3.11: the Fashion-MNIST package
# (where apt is available), a virtual environment in .venv, and gati_jax with its dev extra.
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

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
# Reinstall only when the package definition changed since the last set-up.
stamp=.venv/.gati_jax-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
