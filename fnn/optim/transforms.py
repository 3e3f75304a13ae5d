r"""Gradient transformations optax lacks: one per published update rule it cannot express.

Each ``scale_by_*`` returns the *direction* per unit learning rate, as optax's do; follow it by
``optax.scale_by_learning_rate(lr)`` (the optimizer builder does). All of them compute in the
dtype of the gradients, so with ``jax_enable_x64`` and float64 params every step count, bias
correction and bound is float64.

* :func:`scale_by_adagrad`: Duchi et al. 2011 / PyTorch, epsilon *outside* the root
  (optax's ``scale_by_rss`` puts it inside).
* :func:`scale_by_adam_variant`: Adam's moments with the choices optax fixes: bias correction
  of each moment on or off, epsilon added to the uncorrected root (Kingma & Ba's
  :math:`\hat\epsilon` form, Keras), and AMSGrad's running maximum taken over the raw second
  moment (Reddi et al. 2018, PyTorch, Keras) or the bias-corrected one (optax).
* :func:`scale_by_nadam`: NAdam with Dozat's momentum schedule (PyTorch ``momentum_decay``,
  Keras); ``optax.nadam`` keeps the momentum constant.
* :func:`scale_by_adamax`: AdaMax with epsilon added to ``u_t`` (Keras) instead of to ``|g|``
  inside the maximum (PyTorch, optax).
* :func:`scale_by_adabound` and :func:`adabound`: AdaBound (Luo et al. 2019).

Example:
    >>> params, grads = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.5, -2.0])}
    >>> tx = optax.chain(scale_by_adagrad(eps=1e-10), optax.scale_by_learning_rate(0.1))
    >>> updates, state = tx.update(grads, tx.init(params))
    >>> np.allclose(updates["w"], [-0.1, 0.1])      # first step: -0.1 * g / |g|
    True
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["scale_by_adagrad", "ScaleByAdagradState", "scale_by_adam_variant",
           "ScaleByAdamVariantState", "scale_by_nadam", "ScaleByNadamState", "scale_by_adamax",
           "scale_by_adabound", "ScaleByAdaBoundState", "adabound"]


def _divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator``, 0 where the denominator is 0 (a leaf never given a
    non-zero gradient, with ``eps = 0``)."""
    safe = jnp.where(denominator == 0, jnp.ones_like(denominator), denominator)
    return jnp.where(denominator == 0, jnp.zeros_like(numerator), numerator / safe)


def _step(count: jax.Array, like: jax.Array) -> jax.Array:
    """The step number ``t`` as a scalar of ``like``'s dtype (float64 under x64 params)."""
    return count.astype(like.dtype)


def _zero_moments(params: optax.Params) -> dict[str, Any]:
    """Adam's starting state fields: ``count`` 0 and both moments zero, shaped like ``params``."""
    return {"count": jnp.zeros([], jnp.int32), "mu": optax.tree.zeros_like(params),
            "nu": optax.tree.zeros_like(params)}


def _next_moments(updates: optax.Updates, state: Any, b1: float,
                  b2: float) -> tuple[jax.Array, optax.Updates, optax.Updates]:
    """Adam's bookkeeping for one step from ``state.count/mu/nu``: the new ``(count, mu, nu)``,
    ``mu = b1 mu + (1-b1) g`` and ``nu = b2 nu + (1-b2) g^2``."""
    return (optax.safe_increment(state.count),
            optax.tree.update_moment(updates, state.mu, b1, 1),
            optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2))


# --------------------------------------------------------------------------- AdaGrad

class ScaleByAdagradState(NamedTuple):
    """State of :func:`scale_by_adagrad`: the per-entry sum of squared gradients."""

    sum_of_squares: optax.Updates


def scale_by_adagrad(initial_accumulator_value: float = 0.0,
                     eps: float = 1e-10) -> optax.GradientTransformation:
    r"""AdaGrad's direction with epsilon outside the root (Duchi et al. 2011; PyTorch).

    .. math::
        G_t = G_{t-1} + g_t^2, \qquad d_t = g_t / (\sqrt{G_t} + \epsilon),
        \qquad G_0 = \text{initial\_accumulator\_value}

    (``optax.scale_by_rss`` is :math:`g_t / \sqrt{G_t + \epsilon}`, Keras' form.) An entry whose
    denominator is 0 gets direction 0.

    Args:
        initial_accumulator_value: ``G_0 >= 0`` (0 in the paper and PyTorch).
        eps: added to :math:`\sqrt{G_t}` (PyTorch: 1e-10).

    Example:
        >>> tx = optax.chain(scale_by_adagrad(), optax.scale_by_learning_rate(0.1))
        >>> params = {"w": jnp.zeros(2)}
        >>> state = tx.init(params)
        >>> for g in ([3.0, 1.0], [4.0, 0.0]):          # G = 9 + 16 = 25 and 1 + 0 = 1
        ...     updates, state = tx.update({"w": jnp.array(g)}, state)
        >>> np.allclose(updates["w"], [-0.1 * 4 / 5, 0.0])
        True
    """
    def init_fn(params):
        return ScaleByAdagradState(optax.tree.full_like(params, initial_accumulator_value))

    def update_fn(updates, state, params=None):
        del params
        acc = jax.tree.map(lambda g, a: a + jnp.square(g), updates, state.sum_of_squares)
        updates = jax.tree.map(lambda g, a: _divide(g, jnp.sqrt(a) + eps), updates, acc)
        return updates, ScaleByAdagradState(acc)

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- Adam family

class ScaleByAdamVariantState(NamedTuple):
    """State of :func:`scale_by_adam_variant`: step count, raw moments, AMSGrad's maximum
    (``None`` without AMSGrad)."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates | None


def scale_by_adam_variant(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                          eps_root: float = 0.0, *, bias_correction_mu: bool = True,
                          bias_correction_nu: bool = True, eps_hat: bool = False,
                          amsgrad: bool = False,
                          max_of: str = "raw") -> optax.GradientTransformation:
    r"""Adam's direction with the conventions of its variants as options.

    With :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t`,
    :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2` (both from 0),
    :math:`c_1 = 1-\beta_1^t` and :math:`c_2 = 1-\beta_2^t` (each 1 when its correction is off):

    * ``amsgrad=False``: :math:`V_t = v_t`;
      ``amsgrad=True, max_of="raw"``: :math:`V_t = \max(V_{t-1}, v_t)` (Reddi et al. 2018,
      PyTorch, Keras); ``max_of="corrected"``: :math:`V_t = \max(V_{t-1}, v_t / c_2)` and
      :math:`c_2` is then not applied again (optax).
    * ``eps_hat=False``: :math:`d_t = (m_t / c_1) / (\sqrt{V_t / c_2 + \epsilon_{root}} +
      \epsilon)` (Kingma & Ba 2015, Algorithm 1; PyTorch; optax);
      ``eps_hat=True``: :math:`d_t = (\sqrt{c_2} / c_1)\, m_t / (\sqrt{V_t +
      \epsilon_{root}} + \hat\epsilon)` (the paper's "efficient" form, Section 2; Keras).

    Args:
        b1, b2: decay rates of the moments, in ``[0, 1)``.
        eps: added to the root; eps_root: added under it.
        bias_correction_mu, bias_correction_nu: divide by :math:`c_1`, :math:`c_2`.
        eps_hat: epsilon added to the uncorrected root.
        amsgrad: use the running maximum of the second moment.
        max_of: ``"raw"`` or ``"corrected"``: which second moment the maximum is taken of.

    Example:
        >>> keras_adam = optax.chain(scale_by_adam_variant(eps=1e-7, eps_hat=True),
        ...                          optax.scale_by_learning_rate(1e-3))
        >>> params = {"w": jnp.zeros(2)}
        >>> updates, _ = keras_adam.update({"w": jnp.array([0.5, -2.0])}, keras_adam.init(params))
        >>> np.allclose(updates["w"], [-1e-3, 1e-3])    # first step: about -lr * sign(g)
        True
    """
    if max_of not in ("raw", "corrected"):
        raise ValueError(f"scale_by_adam_variant: max_of must be 'raw' or 'corrected', "
                         f"got {max_of!r}")
    if eps_hat and amsgrad and max_of == "corrected":
        raise ValueError("scale_by_adam_variant: eps_hat needs the maximum of the raw second "
                         "moment (max_of='raw')")

    def init_fn(params):
        return ScaleByAdamVariantState(
            **_zero_moments(params), nu_max=optax.tree.zeros_like(params) if amsgrad else None)

    def update_fn(updates, state, params=None):
        del params
        count, mu, nu = _next_moments(updates, state, b1, b2)

        def corrections(like):
            t = _step(count, like)
            c1 = 1 - b1 ** t if bias_correction_mu else jnp.ones_like(t)
            c2 = 1 - b2 ** t if bias_correction_nu else jnp.ones_like(t)
            return c1, c2

        if amsgrad:
            def new_max(v, v_max):
                c2 = corrections(v)[1]
                return jnp.maximum(v_max, v if max_of == "raw" else v / c2)
            nu_max = jax.tree.map(new_max, nu, state.nu_max)
        else:
            nu_max = None

        def direction(g, m, v):
            c1, c2 = corrections(g)
            if amsgrad and max_of == "corrected":
                c2 = jnp.ones_like(c2)
            if eps_hat:
                d = jnp.sqrt(c2) / c1 * m / (jnp.sqrt(v + eps_root) + eps)
            else:
                d = (m / c1) / (jnp.sqrt(v / c2 + eps_root) + eps)
            return d.astype(g.dtype)

        updates = jax.tree.map(direction, updates, mu, nu_max if amsgrad else nu)
        return updates, ScaleByAdamVariantState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- NAdam

class ScaleByNadamState(NamedTuple):
    """State of :func:`scale_by_nadam`: step count, moments and the product of the momentum
    schedule :math:`\\prod_{i \\le t} \\mu_i` (a scalar)."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    mu_product: jax.Array


def scale_by_nadam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   eps_root: float = 0.0, momentum_decay: float = 4e-3,
                   ) -> optax.GradientTransformation:
    r"""NAdam's direction with Dozat's momentum schedule (Dozat 2016; PyTorch; Keras).

    .. math::
        \mu_t = \beta_1 (1 - \tfrac12\, 0.96^{t \psi}), \qquad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

        d_t = \Big(\frac{\mu_{t+1} m_t}{1 - \prod_{i=1}^{t+1}\mu_i}
              + \frac{(1-\mu_t) g_t}{1 - \prod_{i=1}^{t}\mu_i}\Big)
              \Big/ \Big(\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon\Big)

    with :math:`\psi` = ``momentum_decay`` (PyTorch's name; Dozat's 0.004, i.e. ``t / 250``;
    Keras fixes it at 0.004). This is the rule of Keras' ``Nadam`` (written by Dozat) and of
    PyTorch's ``NAdam``. ``optax.nadam`` is the same with :math:`\mu_t = \beta_1` for all
    ``t`` (no schedule).

    Args:
        b1, b2: decay rates; eps, eps_root: added to the root and under it.
        momentum_decay: :math:`\psi \ge 0`.

    Example:
        >>> tx = optax.chain(scale_by_nadam(), optax.scale_by_learning_rate(2e-3))
        >>> params = {"w": jnp.zeros(2)}
        >>> updates, _ = tx.update({"w": jnp.array([0.5, -2.0])}, tx.init(params))
        >>> updates["w"].shape
        (2,)
    """
    def init_fn(params):
        return ScaleByNadamState(**_zero_moments(params),
                                 mu_product=jnp.ones([], jnp.result_type(float)))

    def schedule(t):
        return b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))

    def update_fn(updates, state, params=None):
        del params
        count, mu, nu = _next_moments(updates, state, b1, b2)
        t = _step(count, state.mu_product)
        mu_product = state.mu_product * schedule(t)

        def direction(g, m, v):
            tt = _step(count, g)
            mu_t, mu_next = schedule(tt), schedule(tt + 1)
            prod = mu_product.astype(g.dtype)
            m_bar = mu_next * m / (1 - prod * mu_next) + (1 - mu_t) * g / (1 - prod)
            return (m_bar / (jnp.sqrt(v / (1 - b2 ** tt) + eps_root) + eps)).astype(g.dtype)

        updates = jax.tree.map(direction, updates, mu, nu)
        return updates, ScaleByNadamState(count=count, mu=mu, nu=nu, mu_product=mu_product)

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- AdaMax

def scale_by_adamax(b1: float = 0.9, b2: float = 0.999,
                    eps: float = 1e-8) -> optax.GradientTransformation:
    r"""AdaMax's direction with epsilon added to ``u_t`` (Kingma & Ba 2015, Algorithm 2; Keras).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad u_t = \max(\beta_2 u_{t-1}, |g_t|),
        \quad d_t = \frac{m_t}{(1-\beta_1^t)(u_t + \epsilon)}

    (The paper has no epsilon; ``optax.scale_by_adamax`` and PyTorch take
    :math:`u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon)` and divide by it.) An entry whose
    denominator is 0 gets direction 0.

    Example:
        >>> tx = optax.chain(scale_by_adamax(), optax.scale_by_learning_rate(2e-3))
        >>> params = {"w": jnp.zeros(2)}
        >>> updates, _ = tx.update({"w": jnp.array([0.5, -2.0])}, tx.init(params))
        >>> np.allclose(updates["w"], [-2e-3, 2e-3])    # first step: -lr * g / |g|
        True
    """
    def init_fn(params):
        return optax.ScaleByAdamState(**_zero_moments(params))

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = jax.tree.map(lambda g, u: jnp.maximum(b2 * u, jnp.abs(g)), updates, state.nu)
        count = optax.safe_increment(state.count)

        def direction(g, m, u):
            return _divide(m, (1 - b1 ** _step(count, g)) * (u + eps)).astype(g.dtype)

        updates = jax.tree.map(direction, updates, mu, nu)
        return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- AdaBound

class ScaleByAdaBoundState(NamedTuple):
    """State of :func:`scale_by_adabound`: step count, first and second moments.

    ``nu_max`` is the running maximum of ``nu`` for AMSBound, ``None`` otherwise.
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates | None


def scale_by_adabound(final_lr: float = 0.1, gamma: float = 1e-3, b1: float = 0.9,
                      b2: float = 0.999, eps: float = 1e-8, *, base_learning_rate: float = 1.0,
                      amsbound: bool = False) -> optax.GradientTransformation:
    r"""AdaBound's direction, per unit learning rate (Luo et al. 2019); follow it by ``-lr``.

    Follows the authors' PyTorch implementation (github.com/Luolc/AdaBound), in which the step
    of a parameter at step ``t`` (from 1) with learning rate ``lr_t`` is

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

        \eta_t = \mathrm{clip}\Big(\frac{lr_t \sqrt{1-\beta_2^t} / (1-\beta_1^t)}
                 {\sqrt{v_t} + \epsilon},\ \eta^l_t,\ \eta^u_t\Big), \qquad
        \theta_t = \theta_{t-1} - \eta_t m_t

        \eta^l_t = f_t\,(1 - \tfrac{1}{\gamma t + 1}), \quad
        \eta^u_t = f_t\,(1 + \tfrac{1}{\gamma t}), \quad
        f_t = \mathrm{final\_lr} \cdot lr_t / \mathrm{base\_lr}

    (``v_t`` replaced by its running maximum for AMSBound). The final (SGD) rate ``f_t`` follows
    the learning-rate schedule as in the reference code; the paper's extra ``1/sqrt(t)`` factor
    is not applied (the reference code omits it; Adam's bias correction takes its place).
    For ``lr_t > 0``, ``clip(lr_t a, lr_t l, lr_t u) = lr_t clip(a, l, u)``, so this
    transformation returns ``clip(a, l, u) * m_t`` with bounds relative to the learning rate
    and ``optax.scale_by_learning_rate`` multiplies by ``-lr_t``, as in every optax optimizer.
    Step count, corrections and bounds are computed in the gradients' dtype (float64 under
    ``jax_enable_x64`` with float64 params).

    Args:
        final_lr: the SGD learning rate the bounds converge to (for the base learning rate).
        gamma: convergence speed of the bounds, in ``[0, 1)`` (0: plain Adam).
        b1, b2: decay rates of the first and second moments.
        eps: added to ``sqrt(v_t)``.
        base_learning_rate: the learning rate ``final_lr`` belongs to (``> 0``).
        amsbound: use the running maximum of ``v_t`` (AMSBound).

    Example:
        >>> tx = optax.chain(scale_by_adabound(final_lr=0.1, base_learning_rate=1e-3),
        ...                  optax.scale_by_learning_rate(1e-3))
        >>> params = {"w": jnp.zeros(2)}
        >>> updates, _ = tx.update({"w": jnp.array([0.5, -2.0])}, tx.init(params))
        >>> updates["w"].shape
        (2,)
    """
    if not base_learning_rate > 0:
        raise ValueError(f"scale_by_adabound: base_learning_rate must be > 0, "
                         f"got {base_learning_rate!r}")
    if not final_lr >= 0:
        raise ValueError(f"scale_by_adabound: final_lr must be >= 0, got {final_lr!r}")
    if not 0 <= gamma < 1:
        raise ValueError(f"scale_by_adabound: gamma must be in [0, 1), got {gamma!r}")
    ratio = final_lr / base_learning_rate

    def init_fn(params):
        return ScaleByAdaBoundState(
            **_zero_moments(params), nu_max=optax.tree.zeros_like(params) if amsbound else None)

    def update_fn(updates, state, params=None):
        del params
        count, mu, nu = _next_moments(updates, state, b1, b2)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsbound else None

        def direction(g, m, v):
            t = _step(count, g)
            step = jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            lower = ratio * (1 - 1 / (gamma * t + 1))
            upper = ratio * (1 + 1 / (gamma * t))
            return (jnp.clip(step / (jnp.sqrt(v) + eps), lower, upper) * m).astype(g.dtype)

        updates = jax.tree.map(direction, updates, mu, nu_max if amsbound else nu)
        return updates, ScaleByAdaBoundState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return optax.GradientTransformation(init_fn, update_fn)


def adabound(learning_rate: optax.ScalarOrSchedule, final_lr: float = 0.1, gamma: float = 1e-3,
             b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
             base_learning_rate: float | None = None,
             amsbound: bool = False) -> optax.GradientTransformation:
    """The AdaBound optimizer (Luo et al. 2019): Adam whose per-parameter step is clipped to
    bounds converging to ``final_lr``, so it turns into SGD; see :func:`scale_by_adabound`.

    Args:
        learning_rate: the Adam learning rate, a number or an optax schedule.
        final_lr, gamma, b1, b2, eps, amsbound: as in :func:`scale_by_adabound`.
        base_learning_rate: the learning rate ``final_lr`` is given for; the bounds scale by
            ``lr_t / base_learning_rate``. Defaults to ``learning_rate`` when it is a number;
            required with a schedule (pass its peak value).

    Example:
        >>> params, grads = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.5, -2.0])}
        >>> opt = adabound(1e-3, final_lr=0.1)
        >>> updates, state = opt.update(grads, opt.init(params), params)
        >>> np.allclose(updates["w"], [-1e-3, 1e-3])    # early on: Adam's step
        True
    """
    if base_learning_rate is None:
        if callable(learning_rate):
            raise ValueError("adabound: base_learning_rate is required when learning_rate is a "
                             "schedule (pass the schedule's base or peak value)")
        base_learning_rate = float(learning_rate)
    return optax.chain(
        scale_by_adabound(final_lr, gamma, b1, b2, eps, base_learning_rate=base_learning_rate,
                          amsbound=amsbound),
        optax.scale_by_learning_rate(learning_rate))
