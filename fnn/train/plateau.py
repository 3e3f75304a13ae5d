"""Lower the learning rate when a validation metric stops improving (``schedule: plateau``).

The optimizer runs at a constant learning rate held in its state (an ``inject_hyperparams``
hyperparameter, see :func:`fnn.optim.make_optimizer`); after each epoch, :meth:`Plateau.update`
follows ``monitor`` with a :class:`~fnn.train.tracker.Tracker` and, when it has not improved
for ``patience`` epochs, multiplies that learning rate by ``factor`` (not below ``min_lr``) and
starts counting again. The learning rate lives in the optimizer state and the counter in the
checkpoint's progress, so a resumed run goes on as it was. The rule is Keras's
``ReduceLROnPlateau`` (``cooldown=0``); PyTorch's lowers one epoch later (its ``patience``
counts the bad epochs it tolerates: ours ``p`` is its ``p - 1``, with ``threshold=0``).

Example:
    >>> opt = fnn.optim.make_optimizer({"name": "sgd", "learning_rate": 0.1,
    ...                                 "schedule": {"name": "plateau", "patience": 1}})
    >>> opt_state = opt.init({"w": jnp.zeros(2)})
    >>> plateau = Plateau(factor=0.5, patience=1, monitor="val_loss")
    >>> for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.97], 1):
    ...     opt_state, note = plateau.update({"val_loss": loss}, epoch, opt_state)
    >>> round(float(fnn.optim.learning_rate_of(opt_state)), 6)   # lowered after epochs 3, 4
    0.025
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import optax

from fnn.core import key_name
from fnn.optim import learning_rate_of
from fnn.train.tracker import EarlyStopping, Tracker

__all__ = ["Plateau"]


@dataclasses.dataclass
class Plateau:
    """Multiply the learning rate by ``factor`` after ``patience`` epochs without improvement.

    Attributes:
        factor: the multiplier, in (0, 1).
        patience: epochs without improvement of ``monitor`` before lowering.
        monitor: a key of the epoch record (``val_loss``, ``val_accuracy``, ``train_loss``...).
        mode: ``min``, ``max`` or ``auto`` (max for accuracies).
        min_delta: the smallest change that counts as an improvement.
        min_lr: the learning rate is never lowered below this.
    """

    factor: float = 0.1
    patience: int = 10
    monitor: str = "val_loss"
    mode: str = "auto"
    min_delta: float = 0.0
    min_lr: float = 0.0

    def __post_init__(self):
        self.tracker = Tracker(EarlyStopping(self.monitor, self.mode, self.patience,
                                             self.min_delta))

    def update(self, record: Mapping[str, Any], epoch: int, opt_state: Any
               ) -> tuple[Any, str | None]:
        """Take one epoch's record: ``(opt_state, note)``, the learning rate lowered (and a
        one-line note) when ``monitor`` has not improved for ``patience`` epochs."""
        self.tracker.update(record, epoch)
        if not self.tracker.should_stop:
            return opt_state, None
        self.tracker.waited = 0
        old = learning_rate_of(opt_state)
        if old is None:
            raise ValueError("optimizer.schedule: plateau needs the optimizer's learning rate in "
                             "its state (an optimizer from fnn.optim.make_optimizer)")
        new = jnp.maximum(old * self.factor, self.min_lr).astype(old.dtype)
        opt_state = optax.tree.set(  # the hyperparams["learning_rate"] learning_rate_of reads
            opt_state, lambda path, _: len(path) >= 2 and key_name(path[-2]) == "hyperparams",
            learning_rate=new)
        lr = lambda v: float(jnp.ravel(v)[0])
        return opt_state, (f"plateau: {self.monitor} did not improve for {self.patience} epochs: "
                           f"learning rate {lr(old):.4g} -> {lr(new):.4g}")

    def state_dict(self) -> dict[str, Any]:
        return {"plateau": self.tracker.state_dict()}

    def load_state_dict(self, progress: Mapping[str, Any]) -> None:
        if "plateau" in progress:
            self.tracker.load_state_dict(progress["plateau"])
