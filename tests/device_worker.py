"""Run a test module as a worker process on simulated CPU devices, for the tests.

``--xla_force_host_platform_device_count`` is read only when JAX starts, so a test needing 4
or 8 devices runs its own file as a script in a subprocess (with this flag) and reads back the
``report.json`` the script writes into ``out``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_worker(script: str, out: Path, devices: int, *args: str) -> Any:
    """Run ``python script out *args`` on ``devices`` simulated CPU devices; assert it exits 0
    (its output tails in the message otherwise); return its ``out/report.json``."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    proc = subprocess.run([sys.executable, script, str(out), *args], env=env,
                          capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((out / "report.json").read_text())
