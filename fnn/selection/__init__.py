"""Model selection: k-fold cross-validation and hyper-parameter sweeps (grid and random search).

Both train models from a config (see ``fnn.config``) and judge them on **validation** data
only; the test set is never touched while choosing.

* :func:`cross_validate` divides the non-test data of a config into ``k`` folds (stratified
  with ``data.stratify``); each fold is the validation set once while a model is trained on the
  other ``k - 1``. It reports every fold's validation metrics and their mean and standard
  deviation. ``data.validation`` is ignored (each fold is the validation set), and with
  ``data.standardize`` the standardizer is fitted on each fold's training part only.
* :func:`sweep` trains one model per setting (a dict of dotted config keys, as in
  ``fnn.config.apply_overrides``), each in a normal run folder, ranks them by a validation
  metric, and only then evaluates the winner on the test set (its ``test.json``).
  :func:`grid_settings` and :func:`random_settings` make the settings.

A model's score is its validation record at the checkpoint the run keeps
(``checkpoints/best.safetensors``: the best epoch by ``training.early_stopping.monitor``, or by
``val_accuracy``/``val_loss`` without early stopping), so the winner's test metrics are those of
the very weights that were ranked.

Output folders::

    <cv folder>/cv.json  cv.csv  folds.npz  fold_1/ ... fold_K/  (metrics.jsonl, checkpoints/)
    <sweep folder>/sweep.json  sweep.csv  sweep.png  trial_00/ ... (each a run folder; test.json
                                                                   in the winner's only)

The package, one job per module:

* ``spaces``: search spaces (:class:`Choice`, :class:`Uniform`, :class:`LogUniform`) and the
  settings of grid and random search;
* ``options``: the ``KEY=V1,V2`` / ``KEY=LOW,HIGH`` command-line values of ``fnn sweep``;
* ``ranking``: the metric rules (default metric, min or max, the kept epoch) and choosing the
  best trial;
* ``training``: one selection run (fresh folder, prefixed log, no test set);
* ``cv``: :func:`cross_validate`; ``sweeps``: :func:`sweep`;
* ``results``: the records returned (:class:`FoldResult`, :class:`CVResult`, :class:`Trial`,
  :class:`SweepResult`);
* ``report``: text tables, the CSV/JSON/NPZ files and the sweep plot;
* ``errors``: :class:`SelectionError`.

Example (XOR, two epochs per model; a few seconds):
    >>> import pathlib, tempfile
    >>> xor = pathlib.Path(fnn.__file__).parents[1] / "configs" / "xor.yaml"
    >>> cfg = fnn.config.load_config(xor, ["training.epochs=2", "output.plots=false",
    ...                                    "data.validation=1"])
    >>> cv = fnn.selection.cross_validate(cfg, folds=2, out=tempfile.mkdtemp(), log=None)
    >>> cv.metric, len(cv.folds)                      # cv.mean, cv.std: over the 2 folds
    ('val_accuracy', 2)
    >>> space = {"optimizer.learning_rate": [0.1, 0.5], "model.0.Dense.features": [2, 4]}
    >>> result = fnn.selection.sweep(cfg, fnn.selection.grid_settings(space),
    ...                              out=tempfile.mkdtemp(), log=None)
    >>> len(result.trials), result.best.setting in [t.setting for t in result.trials]
    (4, True)
    >>> sorted(result.test)                           # the winner's test metrics
    ['accuracy', 'checkpoint', 'examples', 'loss']
"""

from __future__ import annotations

from fnn.selection.cv import cross_validate
from fnn.selection.errors import SelectionError
from fnn.selection.options import parse_bounds, parse_values
from fnn.selection.ranking import choose_best, default_metric, metric_mode
from fnn.selection.report import format_sweep_table, format_table, plot_sweep
from fnn.selection.results import CVResult, FoldResult, SweepResult, Trial
from fnn.selection.spaces import (Choice, Distribution, LogUniform, Uniform, grid_settings,
                                  random_settings)
from fnn.selection.sweeps import sweep
from fnn.selection.training import Log

__all__ = ["SelectionError", "Choice", "Uniform", "LogUniform", "grid_settings",
           "random_settings", "parse_values", "parse_bounds", "default_metric", "metric_mode",
           "FoldResult", "CVResult", "cross_validate", "Trial", "SweepResult", "sweep",
           "choose_best", "format_table", "format_sweep_table", "plot_sweep"]
