"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

# Tests never write JAX's compilation cache into the real home (fnn train turns it on by
# default); a test of the cache points FNN_COMPILE_CACHE at its own folder.
os.environ.setdefault("FNN_COMPILE_CACHE", "0")


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size, name="disk")``: a folder under ``tmp_path`` on a fresh tmpfs of ``size``
    (e.g. ``"48k"``), unmounted after the test; skipped where mounting needs root we lack."""
    mounted = []

    def mount(size: str, name: str = "disk"):
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root")
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)
