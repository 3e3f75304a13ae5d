"""Shared pytest set-up: the names every doctest in fnn/ and docs/ may use without importing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update({"jax": jax, "jnp": jnp, "np": np, "optax": optax, "fnn": fnn})
