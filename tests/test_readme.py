"""The README's Python quickstart runs as written (on small synthetic data in place of MNIST)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_quickstart_runs_unchanged(tmp_path, monkeypatch):
    quickstart = _python_blocks()[0]
    assert "fit(" in quickstart and "fnn.load(" in quickstart
    rng = np.random.default_rng(0)

    def digits(n):
        return rng.normal(size=(n, 784)).astype(np.float32), rng.integers(0, 10, n)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = digits(256), digits(64), digits(64)
    namespace = {"x": x_train[:8], "labels": y_train[:8], "x_train": x_train, "y_train": y_train,
                 "x_val": x_val, "y_val": y_val, "x_test": x_test, "y_test": y_test}
    monkeypatch.chdir(tmp_path)  # the quickstart saves mlp.safetensors in the working folder
    exec(compile(quickstart.replace("epochs=10", "epochs=2"), str(README), "exec"), namespace)
    assert namespace["probs"].shape == (64, 10)
    assert (tmp_path / "mlp.safetensors").exists()
    assert namespace["net"].spec["serial"]["layers"][1] == {"Dense": {"features": 800}}
