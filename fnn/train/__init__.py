"""Training: train state, jit-compiled steps, the fit loop, predict/evaluate, checkpoints, data parallelism."""

from fnn.train import parallel

from fnn.train.checkpoint import (CheckpointError, UnverifiedCheckpointWarning, WriteError,
                                  clean_temporary_files, load, load_weights, read_metadata, save,
                                  save_weights)
from fnn.train.contract import LossContractError, check_shapes, per_example
from fnn.train.data import batch_source
from fnn.train.checkpointing import Checkpointing, Preempted
from fnn.train.loop import FitResult, TrainingDiverged, fit, prefetch
from fnn.train.predict import evaluate, predict
from fnn.train.run_folder import RunFolder
from fnn.train.run_options import RunOptions
from fnn.train.state import TrainState, init_train_state
from fnn.train.step import (binary_correct, correct, eval_step_fn, make_eval_step,
                            make_train_epoch, make_train_step, train_step_fn)
from fnn.train.tracker import EarlyStopping, Tracker
from fnn.train.parallel import DataParallel
