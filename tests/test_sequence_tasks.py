"""Next-token tasks: sequence_cross_entropy, exact_match and bits_per_token against NumPy
formulas; the addition and python_source data sets; their configs validate."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.data.synthetic import ADDITION_TOKENS, addition
from fnn.data.text import PYTHON_SOURCE_FILES, python_source

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _np_nats(logits, labels):
    out = []
    for z, lab in zip(logits, labels):
        logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
        terms = [-logp[t, c] for t, c in enumerate(lab) if c >= 0]
        out.append(np.mean(terms) if terms else 0.0)
    return np.array(out)


def test_sequence_cross_entropy_and_bits_per_token_equal_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5, 7))
    labels = rng.integers(0, 7, size=(4, 5))
    labels[0, :3] = -1
    labels[3] = -1  # nothing scored: 0
    expected = _np_nats(logits, labels)
    got = fnn.losses.sequence_cross_entropy(jnp.asarray(logits, jnp.float32), labels, reduction="none")
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    assert float(fnn.losses.get("sequence_cross_entropy")(logits, labels)) == pytest.approx(expected.mean(), rel=1e-5)
    bits = fnn.metrics.bits_per_token(jnp.asarray(logits, jnp.float32), labels, reduction="none")
    np.testing.assert_allclose(np.asarray(bits), expected / np.log(2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expects integer labels"):
        fnn.losses.sequence_cross_entropy(logits, labels.astype(float))


def test_exact_match_needs_every_scored_position():
    scores = np.zeros((3, 4, 5))
    labels = np.array([[-1, -1, 2, 3], [-1, -1, 2, 3], [1, 1, 1, 1]])
    scores[0, [2, 3], [2, 3]] = 1.0           # both answer steps right
    scores[1, 2, 2] = 1.0; scores[1, 3, 4] = 1.0   # one wrong  # noqa: E702
    scores[2, :, 1] = 1.0; scores[2, 0, 0] = 2.0   # first step wrong  # noqa: E702
    scores[0, 0, 4] = 5.0                     # an unscored step may be anything
    got = fnn.metrics.exact_match(scores, labels, reduction="none")
    np.testing.assert_array_equal(np.asarray(got), [1.0, 0.0, 0.0])


def test_addition_problems_are_right_and_held_out():
    x, y = addition(3000, digits=3, seed=4)
    assert x.shape == y.shape == (3000, 11) and x.dtype == np.int32
    np.testing.assert_array_equal(x[:, 1:], np.where(y[:, :-1] < 0, x[:, 1:], y[:, :-1]))
    assert np.all(y[:, :7] == -1) and np.all(y[:, 7:] >= 0)
    seqs = ["".join(ADDITION_TOKENS[t] for t in row) + ADDITION_TOKENS[last]
            for row, last in zip(x, y[:, -1])]
    for s in seqs[:200]:
        a, rest = s.split("+")
        b, answer = rest.split("=")
        assert len(a) == len(b) == 3 and int(answer[::-1]) == int(a) + int(b)
    assert len(set(seqs)) == 3000  # no problem twice: the first n and the rest are disjoint


def test_python_source_windows_and_split():
    x, y, test_x, test_y = python_source(length=100, test_fraction=0.2)
    assert x.shape[1] == 100 and x.dtype == np.int32 and int(x.max()) < 128
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(x[1:, 0], y[:-1, -1])   # consecutive, non-overlapping windows
    assert 0.15 < len(test_x) / (len(x) + len(test_x)) < 0.25
    assert "def " in fnn.data.text.decode_chars(x[:50])
    with pytest.raises(ValueError, match="not a file of this Python's standard library"):
        python_source(files=PYTHON_SOURCE_FILES + ("no_such_module.py",))


@pytest.mark.parametrize("name", ["mnist_vit", "addition_transformer", "chars_python"])
def test_attention_configs_validate(name, monkeypatch):
    from fnn import config, run

    monkeypatch.setenv("FNN_DATA_DIR", "/nonexistent")
    cfg = config.load_config(CONFIGS / f"{name}.yaml")
    data = run.load_data(cfg, stand_in=True) if name == "mnist_vit" else run.load_data(cfg)
    run.check_shapes(cfg, data)
    if name == "addition_transformer":
        train = {tuple(r) for r in np.concatenate([data["train"]["x"], data["val"]["x"]])}
        assert not train & {tuple(r) for r in data["test"]["x"]}


def test_a_bad_head_count_is_one_line_before_compiling(tmp_path):
    from fnn import config, run

    text = (CONFIGS / "mnist_vit.yaml").read_text().replace("num_heads: 4", "num_heads: 3", 1)
    (tmp_path / "bad.yaml").write_text(text)
    cfg = config.load_config(tmp_path / "bad.yaml")
    with pytest.raises(Exception, match=r"num_heads=3 does not divide the width 64") as info:
        run.check_shapes(cfg, run.load_data(cfg, stand_in=True))
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_addition_transformer_is_exact_on_held_out_problems_and_generates(tmp_path):
    from fnn.config import load_config
    from fnn.run import train

    cfg = load_config(CONFIGS / "addition_transformer.yaml", ["output.progress=false",
                                                              "training.epochs=6"])
    run_dir = train(cfg, tmp_path / "addition", log=None)
    assert json.loads((run_dir / "test.json").read_text())["exact_match"] >= 0.99
    net, params, state = fnn.load(run_dir / "checkpoints" / "best.safetensors")
    prompt = np.array([[ADDITION_TOKENS.index(c) for c in "123+456="]])
    out = fnn.generate(net, params, state, prompt, 4, temperature=0.0)
    assert "".join(ADDITION_TOKENS[t] for t in np.asarray(out)[0, 8:]) == "9750"  # 579 reversed
