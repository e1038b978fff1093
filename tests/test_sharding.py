"""Multi-device paths on 4 forced CPU devices (a subprocess: the device count is fixed when
JAX starts), and the mesh config's validation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import assert_config_rejects

ROOT = Path(__file__).resolve().parents[1]


def test_sharded_paths_on_four_forced_cpu_devices():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rs",
            str(ROOT / "tests" / "sharded_cases.py"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]


def test_mesh_config_is_validated():
    assert_config_rejects("mesh", "model_parallel", 0)
    assert_config_rejects("mesh", "devices", -1)
