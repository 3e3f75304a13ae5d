"""Print a sample from a trained decoder-only run, decoded step by step with the key/value cache.

The run's data set decides how text becomes tokens: ``python_source`` (characters, ids 0..127)
or ``addition`` (``0123456789+=``; the answer comes out least significant digit first, and the
script also prints it the usual way round). A character model sees at most its training window
at once (``fnn.generate(..., context=)``): longer samples restart from the last half window.

    python scripts/generate.py runs/chars_python --prompt "def " --steps 300
    python scripts/generate.py runs/addition_transformer --prompt "123+456=" --steps 4 --temperature 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np
import yaml

import fnn
from fnn.data.synthetic import ADDITION_TOKENS
from fnn.data.text import decode_chars


def encode(text: str, data: str) -> np.ndarray:
    if data == "addition":
        bad = sorted(set(text) - set(ADDITION_TOKENS))
        if bad:
            raise SystemExit(f"generate: --prompt: characters {bad} are not tokens of the "
                             f"addition data ({ADDITION_TOKENS})")
        return np.array([ADDITION_TOKENS.index(c) for c in text], np.int32)
    if any(ord(c) > 127 for c in text):
        raise SystemExit("generate: --prompt: the character model knows ASCII only")
    return np.array([ord(c) for c in text], np.int32)


def decode(ids: np.ndarray, data: str) -> str:
    if data == "addition":
        return "".join(ADDITION_TOKENS[int(i)] for i in ids)
    return decode_chars(ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder written by fnn train")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--steps", type=int, default=200, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    parser.add_argument("--context", type=int, default=None,
                        help="the most tokens the model sees at once (default: the run's "
                             "window, data.options.length, for python_source)")
    args = parser.parse_args(argv)
    config, ckpt = args.run / "config.yaml", args.run / "checkpoints" / f"{args.checkpoint}.safetensors"
    for path in (config, ckpt):
        if not path.is_file():
            raise SystemExit(f"generate: {path}: not found; is {args.run} a run folder of fnn train?")
    data_config = yaml.safe_load(config.read_text())["data"]
    data = data_config["name"]
    if data not in ("addition", "python_source"):
        raise SystemExit(f"generate: {config}: data.name is {data!r}; this script knows the "
                         f"'addition' and 'python_source' token sets")
    net, params, state = fnn.load(ckpt)
    prompt = encode(args.prompt, data)[None]
    context = args.context
    if context is None and data == "python_source":  # trained on windows of this length
        context = (data_config.get("options") or {}).get("length", 128)
    out = fnn.generate(net, params, state, prompt, args.steps, temperature=args.temperature,
                       top_k=args.top_k, rng=jax.random.key(args.seed), context=context)
    new = np.asarray(out)[0, prompt.shape[1]:]
    print(args.prompt + decode(new, data))
    if data == "addition":
        print(f"answer (most significant digit first): {decode(new, data)[::-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
