"""Phase-1 and phase-2 training with spawn checkpoints, resume and any tf.distribute strategy.

    config = training.TrainConfig.phase1(epochs=20, data_mode="adv", model=spec)
    with strategy.scope():
        model = models.build(spec)
    history = training.train(model, lambda epoch: dataset_for(epoch), config, workdir,
                             strategy=strategy)

Phase 2 loads a spawn checkpoint into a fresh model, wraps it with `tf_ntk.linearize` for the
linearized or centered dynamics, and trains it the same way with `TrainConfig.phase2`.

A run directory (``workdir``) holds:
  ``spawn/epoch_<e>/``  spawn checkpoints (model only; `tf_ntk.checkpoints`), e = 0 … E and the
                        protocol's fractional epochs, each with the run's configuration and epoch/step;
  ``resume/``           model, optimizer and step after the last whole epoch, plus the history;
  ``history.json``      per-epoch loss, accuracy, learning rate and data kind;
  ``run.json``          the configuration, written first: another configuration is refused.
Each epoch ends with its spawn checkpoint, then ``resume/`` (the commit point), then the callbacks'
records (events, evaluation), then ``history.json``; a restart rewrites ``history.json`` from
``resume/`` and calls ``on_epoch_end`` again for the last epoch when a kill came between them.
A run that stops at any point restarts from ``resume/`` and, with the same configuration, ends with
the same weights as a run never interrupted: batches are shuffled by (data seed, epoch) and each PGD
random start is keyed by (data seed, step), where the data seed is `TrainConfig.data_seed`, or
`TrainConfig.seed` when that is None (the default, and every run recorded before data_seed existed).
``seed`` alone then keys the initialisation (`set_seed` before `tf_ntk.models.build`): two runs with
the same seed and different data seeds start from the same weights and differ only in their data
order and attack starts (a matched noise floor).

Under a multi-replica strategy the loss is the mean over the global batch and each replica's PGD
start is its rows of the global batch's start, so without BN the run equals the single-device run
up to float rounding; BN normalises with each replica's own batch statistics (Keras' default).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import hashlib
import json
import math
import numbers
import os
import shutil
import tempfile
import time
from typing import Any
from typing import cast
import weakref

import keras
import numpy as np
import tensorflow as tf

from tf_ntk import checkpoints
from tf_ntk import distribute
from tf_ntk import dynamics
from tf_ntk import ntk
from tf_ntk import rundir
from tf_ntk.robust import attacks

DATA_MODES = ("clean", "adv", "flip")
"""Training data: clean images, PGD images ("adv"), or clean until `TrainConfig.flip_epoch`
then PGD ("flip")."""
ADV_MODES = ("clean_then_adv", "madry")
"""Adversarial steps: a clean step then a PGD step (the authors'), or the PGD step only."""
DYNAMICS = ("standard", "linearized", "centered")
"""Training dynamics: the network itself, its linearization around the spawn, or the kernel term only."""
# The protocol's fractional spawn epochs (taken mid-epoch at the step that crosses the fraction).
FRACTIONAL_SPAWN_EPOCHS = (0.125, 0.25, 0.375, 0.5, 0.75, 1.5, 2.5)
"""The protocol's fractional spawn epochs."""


def set_seed(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow and makes TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded with every checkpoint).

    Attributes:
      epochs: whole epochs E.
      batch_size: global batch size (recorded; the dataset function must batch accordingly).
      lr: initial learning rate; ``lr_boundaries`` (epochs) multiply it by ``lr_factor`` each.
      momentum: SGD momentum.
      data_mode: ``clean``, ``adv`` (PGD examples), or ``flip`` (clean before ``flip_epoch``,
        adversarial from it on).
      adv_mode: ``clean_then_adv`` (the authors': a clean step, then a step on PGD examples
        crafted against the updated weights) or ``madry`` (one step on the PGD batch).
      attack: the training attack (protocol: L∞ 4/255, 20 steps, step 2ε/20, random start).
      save_epochs: spawn checkpoint epochs (floats); None = 0…E and the protocol's fractions < E.
      seed: the initialisation seed (the caller's `set_seed` before `tf_ntk.models.build`) and,
        when ``data_seed`` is None, everything else too: the data order and the PGD starts.
      data_seed: the data seed: the data order (the caller's dataset function shuffles by it) and
        every training PGD random start, keyed by (data seed, step); None (default) = ``seed``,
        numbers and records as before this field existed (see `effective_data_seed`).
      dynamics, batchnorm, spawn: phase-2 description (``standard`` and None in phase 1).
      jit_compile: compile the train and attack steps with XLA.
      model: the `tf_ntk.models.spec` of the (spawn) network, so checkpoints can be rebuilt.
      data: free-form description of the data (name, options), recorded only.
    """

    epochs: int = 101
    batch_size: int = 128
    lr: float = 0.1
    lr_boundaries: tuple = (100, 150)
    lr_factor: float = 0.1
    momentum: float = 0.9
    data_mode: str = "clean"
    flip_epoch: int = 50
    adv_mode: str = "clean_then_adv"
    attack: attacks.PGDConfig = attacks.PGDConfig(eps=4 / 255, steps=20)
    save_epochs: tuple | None = None
    seed: int = 0
    data_seed: int | None = None
    dynamics: str = "standard"
    batchnorm: str = "frozen"
    spawn: str | None = None
    jit_compile: bool = False
    model: dict | None = None
    data: dict | None = None

    def __post_init__(self) -> None:
        if int(self.epochs) < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not all(math.isfinite(v) for v in (self.lr, self.momentum, self.lr_factor)):
            raise ValueError("lr, momentum and lr_factor must be finite")
        if self.lr < 0 or self.momentum < 0 or self.lr_factor <= 0:
            raise ValueError("lr and momentum must be >= 0 and lr_factor > 0")
        for name, value, known in (("data_mode", self.data_mode, DATA_MODES),
                                   ("adv_mode", self.adv_mode, ADV_MODES),
                                   ("dynamics", self.dynamics, DYNAMICS)):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; known: {', '.join(known)}")
        if self.data_seed is not None:
            if isinstance(self.data_seed, bool) or not isinstance(self.data_seed, numbers.Integral):
                raise ValueError(f"data_seed must be an integer or None, got {self.data_seed!r}")
            object.__setattr__(self, "data_seed", int(self.data_seed))
        if isinstance(self.attack, dict):
            object.__setattr__(self, "attack", attacks.PGDConfig(**self.attack))
        object.__setattr__(self, "lr_boundaries", tuple(float(b) for b in self.lr_boundaries))
        if self.save_epochs is not None:
            saves = tuple(sorted({float(e) for e in self.save_epochs}))
            bad = [e for e in saves if not 0 <= e <= self.epochs]
            if bad:
                raise ValueError(f"save_epochs {bad} outside [0, epochs={self.epochs}]")
            object.__setattr__(self, "save_epochs", saves)

    @classmethod
    def phase1(cls, **overrides: Any) -> TrainConfig:
        """The protocol's phase 1: lr 0.1 → 0.01 at 100 → 0.001 at 150, 101 epochs."""
        return cls(**overrides)

    @classmethod
    def phase2(cls, **overrides: Any) -> TrainConfig:
        """The protocol's phase 2: constant lr 0.01, 100 epochs, fresh optimizer."""
        return cls(**{"epochs": 100, "lr": 0.01, "lr_boundaries": (), **overrides})

    @property
    def effective_data_seed(self) -> int:
        """The seed of the data order and of the PGD starts: ``data_seed``, or ``seed`` when None."""
        return self.seed if self.data_seed is None else self.data_seed

    def spawn_epochs(self) -> tuple[float, ...]:
        """The spawn checkpoint epochs of this run, sorted."""
        if self.save_epochs is not None:
            return self.save_epochs
        whole = [float(e) for e in range(self.epochs + 1)]
        return tuple(sorted(set(whole) | {f for f in FRACTIONAL_SPAWN_EPOCHS if f < self.epochs}))

    def adversarial_at(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) trains on PGD examples."""
        return self.data_mode == "adv" or (self.data_mode == "flip" and epoch >= self.flip_epoch)

    def lr_at(self, epoch: float) -> float:
        """The learning rate during (0-based) epoch ``epoch``: lr · factor^(#boundaries ≤ epoch)."""
        return self.lr * self.lr_factor ** sum(epoch >= b for b in self.lr_boundaries)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_boundaries"] = list(self.lr_boundaries)
        if self.data_seed is None:  # the record of a run without one, as before the field existed
            del d["data_seed"]
        if self.save_epochs is not None:
            d["save_epochs"] = list(self.save_epochs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        d = dict(d)
        d["attack"] = attacks.PGDConfig(**d["attack"])
        d["lr_boundaries"] = tuple(d.get("lr_boundaries", ()))
        if d.get("save_epochs") is not None:
            d["save_epochs"] = tuple(d["save_epochs"])
        return cls(**d)


def batches_before(epoch: float, steps_per_epoch: int) -> int:
    """The global step after which the spawn checkpoint of (fractional) ``epoch`` is taken.

    Whole epoch e: after its last batch (e·S). Fraction f of epoch e: at the first step that crosses
    it, e·S + ceil(f·S) (at least one step into the epoch).
    """
    whole = math.floor(epoch)
    frac = epoch - whole
    if frac == 0:
        return whole * steps_per_epoch
    return whole * steps_per_epoch + max(1, math.ceil(frac * steps_per_epoch - 1e-9))


class Callback:
    """Hooks into `train`. Every method is optional; the defaults do nothing."""

    def on_epoch_begin(self, epoch: int, steps_per_epoch: int) -> None:
        """Before (0-based) epoch ``epoch`` of ``steps_per_epoch`` steps."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """After whole epoch ``epoch`` (1-based count of finished epochs); ``logs``: the history row."""

    def on_batch_end(self, step: int, logs: dict[str, float]) -> None:
        """After global step ``step`` (1-based); ``logs``: {"loss", "accuracy"} of the batch."""

    def on_checkpoint(self, epoch: float, path: str) -> None:
        """After the spawn checkpoint of ``epoch`` was written to ``path``."""

    def on_kernel(self, epoch: float, kernel: tf.Tensor) -> None:
        """The probe-set NTK (a tf.Tensor) of the model at ``epoch`` (see `KernelTracker`)."""


class KernelTracker:
    """Computes the NTK of the model on a fixed probe set during training.

    Args:
      probe: probe images (P, H, W, C), e.g. `tf_ntk.data.class_balanced_sample` (50 per class).
      every: compute every ``every`` whole epochs (and at epoch 0); 0 = never on that schedule.
      at_spawns: also compute at every spawn checkpoint (fractional epochs included).
      kernel_fn: ``(model, probe) -> kernel``; default the trace kernel
        ``tf_ntk.empirical_ntk(model, probe)``.
    """

    def __init__(self, probe: tf.Tensor | np.ndarray, *, every: int = 1, at_spawns: bool = False,
                 kernel_fn: Callable[[keras.Model, tf.Tensor], tf.Tensor] | None = None) -> None:
        self.probe = tf.convert_to_tensor(probe, tf.float32)
        self.every = int(every)
        self.at_spawns = bool(at_spawns)
        self.kernel_fn = kernel_fn or (lambda model, x: ntk.empirical_ntk(model, x))

    def wants(self, epoch: float, is_spawn: bool) -> bool:
        whole = float(epoch).is_integer()
        on_schedule = self.every > 0 and whole and int(epoch) % self.every == 0
        return on_schedule or (self.at_spawns and is_spawn)

    def __call__(self, model: keras.Model) -> tf.Tensor:
        return self.kernel_fn(model, self.probe)


def _per_example_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    return attacks.cross_entropy_loss(y, logits)


class TrainSteps:
    """The compiled steps of one run.

    Attributes:
      grads: ``(x, y) -> (gradients, summed loss, correct count)`` on one replica's batch,
        BN in training mode (XLA-compiled when ``config.jit_compile``).
      attack: ``(x, y, seed) -> x_adv``, the training PGD against the current weights, BN in
        inference mode (XLA-compiled when ``config.jit_compile``).
      make(adversarial): the distributed step ``(batch, seed, stop) -> (summed loss, correct,
        examples, stops)``: sums over the global batch and, for ``stop`` (this worker's 0/1 stop
        request), over all replicas, so every worker of a multi-worker job stops at the same step.
    """

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, config: TrainConfig,
                 strategy: tf.distribute.Strategy) -> None:
        self.model = model
        self.optimizer = optimizer
        self.config = config
        self.strategy = strategy
        self.variables = model.trainable_variables
        if not optimizer.built:  # create slots now, not in the first trace (which would retrace)
            with strategy.scope():
                optimizer.build(self.variables)
        model_fn = lambda x: model(x, training=False)  # noqa: E731  one stable callable for PGD
        attack = config.attack
        jit = bool(config.jit_compile)

        def grads(x: tf.Tensor, y: tf.Tensor, global_size: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                per_example = _per_example_loss(y, logits)
                loss = tf.reduce_sum(per_example) / tf.cast(global_size, per_example.dtype)
            correct = tf.reduce_sum(tf.cast(tf.equal(
                tf.argmax(logits, -1, output_type=tf.int32), tf.cast(y, tf.int32)), tf.float32))
            return tape.gradient(loss, self.variables), tf.reduce_sum(per_example), correct

        # XLA compiles the heavy parts (forward/backward, the PGD loop); the optimizer update runs
        # in the enclosing function so every strategy can aggregate gradients across replicas.
        self.grads = tf.function(grads, jit_compile=jit, reduce_retracing=True)
        self.attack = tf.function(
            lambda x, y, seed, offset, total: attack.attack(model_fn, x, y, seed=seed,
                                                            batch_slice=(offset, total)),
            jit_compile=jit, reduce_retracing=True)

    def _apply(self, x: tf.Tensor, y: tf.Tensor, global_size: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        g, loss_sum, correct = self.grads(x, y, global_size)
        self.optimizer.apply_gradients(zip(g, self.variables))
        return loss_sum, correct

    @staticmethod
    def _rows(y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(offset, global size): this replica's rows of the global batch (in a replica context)."""
        ctx = tf.distribute.get_replica_context()
        sizes = ctx.all_gather(tf.shape(y)[:1], axis=0)
        return tf.reduce_sum(sizes[:ctx.replica_id_in_sync_group]), tf.reduce_sum(sizes)

    def adversarial_examples(self, x: tf.Tensor, y: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """PGD examples of this replica's shard (x, y), each started where the one-device attack of
        the global batch starts at that row: the same examples whatever the replica count."""
        offset, total = self._rows(y)
        return tf.stop_gradient(self.attack(x, y, seed, offset, total))

    def replica_step(self, x: tf.Tensor, y: tf.Tensor, seed: tf.Tensor,
                     adversarial: bool) -> tuple[tf.Tensor, tf.Tensor]:
        # The loss is a mean over the global batch, whatever the replica count.
        _, total = self._rows(y)
        if not adversarial:
            return self._apply(x, y, total)
        if self.config.adv_mode == "clean_then_adv":
            self._apply(x, y, total)
        return self._apply(self.adversarial_examples(x, y, seed), y, total)

    def make(self, adversarial: bool) -> Callable[[Any, tf.Tensor, tf.Tensor], tuple[tf.Tensor, ...]]:
        strategy = self.strategy

        def replica(x: tf.Tensor, y: tf.Tensor, seed: tf.Tensor,
                    stop: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
            loss_sum, correct = self.replica_step(x, y, seed, adversarial)
            return loss_sum, correct, tf.cast(tf.shape(y)[0], tf.float32), tf.identity(stop)

        @tf.function
        def step(batch: Any, seed: tf.Tensor, stop: tf.Tensor) -> tuple[tf.Tensor, ...]:
            x, y = batch
            sums = strategy.run(replica, args=(x, y, seed, stop))
            return tuple(strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in sums)

        return step


def _steps_per_epoch(dataset: tf.data.Dataset) -> int:
    n = int(dataset.cardinality().numpy())
    if n < 0:  # unknown or infinite: count once
        n = sum(1 for _ in dataset)
    if n < 1:
        raise ValueError("cannot train on an empty dataset")
    return n


class RunConfigMismatchError(ValueError):
    """The work directory holds a run with another configuration."""


class StopRequested(Exception):  # noqa: N818  (a request, not an error)
    """`train` stopped at a step boundary because ``stop_requested()`` said so (e.g. on SIGTERM);
    its resume checkpoint holds that step, and the same call resumes from it."""


class DivergedError(ValueError):
    """Training produced a non-finite loss or weights; nothing after the last good checkpoint was
    written."""


def _check_finite(model: keras.Model, epoch: int, step: int, loss: float | None = None) -> None:
    """Raises `DivergedError` naming the epoch and step when ``loss`` or any weight is not finite."""
    bad = loss is not None and not math.isfinite(loss)
    if not bad:
        bad = not all(bool(tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v))))
                      for v in model.weights if tf.as_dtype(v.dtype).is_floating)
    if bad:
        what = f"loss {loss}" if loss is not None and not math.isfinite(loss) else "weights"
        raise DivergedError(f"training diverged: non-finite {what} at epoch {epoch + 1}, step {step} "
                            "(try a lower --lr)")


def kept_checkpoints(workdir: str) -> str | None:
    """What a run directory keeps of a stopped run, in words: its spawn checkpoints and resume state
    ("spawn checkpoints of epochs 0, 0.125 and the resume state after epoch 2"), or None."""
    spawns = [f"{epoch:g}" for epoch, _ in checkpoints.list_spawns(workdir)]
    resume_dir = os.path.join(workdir, checkpoints.RESUME_DIR)
    kept = []
    if spawns:
        kept.append(f"the spawn checkpoint{'s' if len(spawns) > 1 else ''} of epoch"
                    f"{'s' if len(spawns) > 1 else ''} {', '.join(spawns)}")
    if checkpoints.exists(resume_dir):
        meta = checkpoints.read_meta(resume_dir)
        epochs = len(meta.get("history", []))
        partial = meta.get("partial")
        where = (f"at epoch {partial['epoch'] + 1}, batch {partial['batches']}" if partial
                 else f"after epoch {epochs}" if epochs else "at the start")
        kept.append(f"the resume state {where}")
    return " and ".join(kept) or None


def _normalized(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons with saved records."""
    return json.loads(json.dumps(obj))


def check_run(workdir: str, config: TrainConfig) -> None:
    """Raises `RunConfigMismatchError` when ``workdir`` holds a run (its record or resume state) of
    another configuration than ``config``; reads only, so a refused command changes nothing."""
    wanted = _normalized(config.to_dict())
    record = rundir.read_record(workdir)
    if record is not None:
        _check_same_run(workdir, record.get("config", {}), wanted)
    resume_dir = os.path.join(workdir, checkpoints.RESUME_DIR)
    if checkpoints.exists(resume_dir):
        _check_same_run(workdir, checkpoints.read_meta(resume_dir).get("config", {}), wanted)
        checkpoints.verify(resume_dir)


def _run_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded configuration (a dict) as compared on resume: with its effective data seed (a record
    without ``data_seed``, from before the field existed, or None: ``seed``), so ``data_seed = seed``
    and no data seed are the same run, and any other data seed is another run."""
    config = dict(config)
    if config.get("data_seed") is None:
        config["data_seed"] = config.get("seed")
    return config


def _check_same_run(workdir: str, saved: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    explicit = saved.get("data_seed") is not None or config.get("data_seed") is not None
    saved, config = _run_identity(saved), _run_identity(config)
    if saved != config:
        diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        if not explicit:  # the data seed is the seed on both sides: name only the seed
            diff = [k for k in diff if k != "data_seed"]
        raise RunConfigMismatchError(
            f"{workdir} holds a run with another configuration (differs in: {', '.join(diff)})")


def _check_dynamics(model: keras.Model, config: TrainConfig) -> None:
    """The model must be what ``config.dynamics`` says, since checkpoints are rebuilt from it."""
    linearized = hasattr(model, "spawn_params")
    if config.dynamics == "standard":
        if linearized:
            raise ValueError("config.dynamics is 'standard' but the model is a tf_ntk.linearize model")
        return
    if not linearized:
        raise ValueError(f"dynamics {config.dynamics!r} needs a tf_ntk.linearize model")
    if model.centered != (config.dynamics == "centered") or model.batchnorm != config.batchnorm:
        kind = "centered" if model.centered else "linearized"
        raise ValueError(f"the model is {kind} with batchnorm={model.batchnorm!r}, but the config says "
                         f"dynamics={config.dynamics!r}, batchnorm={config.batchnorm!r}")


def train(model: keras.Model, dataset_fn: Callable[[int], tf.data.Dataset], config: TrainConfig, workdir: str, *,
          strategy: tf.distribute.Strategy | None = None, callbacks: Sequence[Callback] = (),
          kernel_tracker: KernelTracker | None = None,
          stop_requested: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
    """Trains ``model`` per ``config``, writing spawn checkpoints and resume state in ``workdir``.

    Args:
      model: a built Keras model (logits), or a `tf_ntk.linearize` model for phase 2; created under
        ``strategy.scope()``.
      dataset_fn: ``epoch -> tf.data.Dataset`` of (images (B, H, W, C) in [0, 1], int labels (B,))
        global batches; must give the same batches for the same epoch (e.g. `tf_ntk.data.load` with
        ``shuffle=True, seed=config.effective_data_seed, epoch=epoch``).
      config: a `TrainConfig`.
      workdir: the run directory. A run found there resumes from its resume checkpoint; a finished
        one is returned as is. A run with another configuration raises `RunConfigMismatchError`.
      strategy: a `tf.distribute.Strategy` (default: the current one). Under a multi-worker
        strategy every worker calls `train` with the same arguments: the chief
        (`tf_ntk.distribute.is_chief`) writes the run directory, the others write their share of
        each checkpoint to a temporary directory they delete, and all of them restore the chief's
        resume state together (a barrier, then a check that they start from the same step).
      callbacks: `Callback` instances.
      kernel_tracker: a `KernelTracker`; its kernels go to ``Callback.on_kernel``.
      stop_requested: ``() -> bool``, polled after every step: when true, the resume checkpoint is
        written at that step (mid-epoch: the epoch's batch position and running sums are recorded)
        and `StopRequested` is raised. Rerunning resumes at that step, bit for bit, as if never
        stopped (batches come from ``dataset_fn(epoch)``, skipped up to the position). Workers
        of a multi-worker job stop at the same step when any of them is asked to.

    Returns:
      The history: a list of per-epoch dicts {"epoch", "loss", "accuracy", "lr", "adversarial",
      "seconds"}; loss and accuracy are those of the batch each step last trained on (the PGD batch
      in adversarial epochs), averaged over the epoch with BN in training mode.
    """
    return _Run(model, dataset_fn, config, workdir, strategy=strategy, callbacks=callbacks,
                kernel_tracker=kernel_tracker, stop_requested=stop_requested).run()


# The compiled training state of a model, kept for the next `train` call on the same model object:
# {model: {trace key: _Compiled}}. A sweep worker that reuses its models between jobs
# (`tf_ntk.dynamics.reuse_models`) then reuses their traced train steps too, with fresh values.
_COMPILED: weakref.WeakKeyDictionary[keras.Model, dict[str, "_Compiled"]] = weakref.WeakKeyDictionary()


@dataclasses.dataclass
class _Compiled:
    """The optimizer, counters and traced steps of a model's earlier run (see `_COMPILED`)."""

    optimizer: keras.optimizers.Optimizer
    step: tf.Variable
    epoch: tf.Variable
    lr: tf.Variable
    steps: "TrainSteps"
    step_fns: dict[bool, Callable[..., tuple[tf.Tensor, ...]]]


def _trace_key(config: TrainConfig) -> str:
    """What the traced steps bake in besides the model: the attack, the adversarial mode, XLA, the
    momentum (a constant of the optimizer's update)."""
    return json.dumps([config.attack.to_dict(), config.adv_mode, bool(config.jit_compile),
                       float(config.momentum)], sort_keys=True)


class _Run:
    """One `train` call: the training state, its checkpoints, and the epoch loop."""

    def __init__(self, model: keras.Model, dataset_fn: Callable[[int], tf.data.Dataset], config: TrainConfig,
                 workdir: str, *, strategy: tf.distribute.Strategy | None, callbacks: Sequence[Callback],
                 kernel_tracker: KernelTracker | None, stop_requested: Callable[[], bool] | None) -> None:
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = distribute.is_chief(self.strategy)
        self.multi_worker = distribute.is_multi_worker(self.strategy)
        _check_dynamics(model, config)
        self.model, self.dataset_fn, self.config, self.workdir = model, dataset_fn, config, workdir
        self.callbacks, self.tracker, self.stop_requested = callbacks, kernel_tracker, stop_requested
        # In a sweep worker's job (`tf_ntk.dynamics.reuse_models`, whose pool keeps the models), on one
        # device: the compiled state of an earlier run on this model object serves again, reset to a fresh
        # optimizer's values (traces capture variables, not their values). It lives as long as the worker
        # (replaced after its share of jobs), one per model and trace key. Elsewhere nothing is kept.
        reusable = (dynamics.reusing() and self.strategy is tf.distribute.get_strategy()
                    and not tf.distribute.has_strategy())
        cached = _COMPILED.get(model, {}).get(_trace_key(config)) if reusable else None
        self.step_fns: dict[bool, Callable[..., tuple[tf.Tensor, ...]]]  # adversarial -> compiled step
        if cached is not None:
            optimizer, self.step, self.epoch, self.lr = cached.optimizer, cached.step, cached.epoch, cached.lr
            self.steps, self.step_fns = cached.steps, cached.step_fns
            self.steps.config = config
            for v in (self.step, self.epoch, *optimizer.variables):
                v.assign(tf.zeros_like(v))
            self.lr.assign(config.lr_at(0))
        else:
            with self.strategy.scope():
                self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
                self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
                self.lr = tf.Variable(config.lr_at(0), dtype=tf.float32, trainable=False, name="lr")
                optimizer = keras.optimizers.SGD(learning_rate=lambda lr=self.lr: lr, momentum=config.momentum)
            self.steps = TrainSteps(model, optimizer, config, self.strategy)  # builds the optimizer's slots
            self.step_fns = {}
            if reusable:
                _COMPILED.setdefault(model, {})[_trace_key(config)] = _Compiled(
                    optimizer, self.step, self.epoch, self.lr, self.steps, self.step_fns)
        self.state = dict(model=model, optimizer=optimizer, step=self.step, epoch=self.epoch)
        self.meta = {"config": _normalized(config.to_dict()), "model": config.model}
        self.resume_dir = os.path.join(workdir, checkpoints.RESUME_DIR)
        self.history: list[dict[str, Any]] = []
        self.partial: dict[str, Any] | None = None  # the position and running sums of an epoch stopped midway
        self.steps_per_epoch: int | None = None

    def _restore(self) -> None:
        """Records the run's configuration before anything else is written (and checks it on every
        start, so a work directory never mixes checkpoints of two runs); resumes saved state."""
        config_text = json.dumps(self.meta["config"], sort_keys=True).encode()
        distribute.agree(self.strategy, int(hashlib.sha256(config_text).hexdigest()[:5], 16),
                         "the run's configuration")
        if self.chief:
            record = rundir.read_record(self.workdir)
            if record is not None:
                _check_same_run(self.workdir, record.get("config", {}), self.meta["config"])
            else:
                rundir.write_record(self.workdir, self.meta)
        # A barrier: the chief has claimed the run directory before any worker reads its state.
        distribute.agree(self.strategy, 0, "the start")
        if checkpoints.exists(self.resume_dir):
            saved = checkpoints.read_meta(self.resume_dir)
            _check_same_run(self.workdir, saved.get("config", {}), self.meta["config"])
            checkpoints.restore(self.resume_dir, **self.state)
            self.history = saved.get("history", [])
            self.partial = saved.get("partial")
        distribute.agree(self.strategy, self._current_step(), "the step to resume from")
        self._repair_records()

    def _write_checkpoint(self, path: str, meta: dict[str, Any], **objects: Any) -> None:
        """`checkpoints.write` on the chief; elsewhere into a temporary directory, then deleted
        (every worker takes part in saving distributed variables, only the chief keeps the files)."""
        if self.chief:
            checkpoints.write(path, meta, **objects)
            return
        scratch = tempfile.mkdtemp(prefix="tf_ntk-worker-")
        try:
            checkpoints.write(os.path.join(scratch, os.path.basename(path)), meta, **objects)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _current_step(self) -> int:
        return int(self.step.numpy())

    def _save_spawn(self, epoch: float) -> None:
        path = checkpoints.spawn_path(self.workdir, epoch)
        _check_finite(self.model, int(epoch), self._current_step())
        if not checkpoints.exists(path):  # a replayed partial epoch re-creates identical ones
            self._write_checkpoint(path, {**self.meta, "epoch": float(epoch), "step": self._current_step(),
                                          "steps_per_epoch": self.steps_per_epoch}, model=self.model)
        for cb in self.callbacks:
            cb.on_checkpoint(float(epoch), path)
        if self.tracker is not None and self.tracker.wants(epoch, True):
            self._emit_kernel(epoch)

    def _emit_kernel(self, epoch: float) -> None:
        kernel = cast(KernelTracker, self.tracker)(self.model)  # called only with a tracker
        for cb in self.callbacks:
            cb.on_kernel(float(epoch), kernel)

    def _write_resume(self, position: dict[str, Any] | None = None) -> None:
        meta = {**self.meta, "history": self.history, "steps_per_epoch": self.steps_per_epoch}
        if position is not None:
            meta["partial"] = position
        self._write_checkpoint(self.resume_dir, meta, **self.state)

    def _stop_now(self) -> bool:
        return self.stop_requested is not None and self.stop_requested()

    def run(self) -> list[dict[str, Any]]:
        self._restore()
        try:
            for epoch in range(int(self.epoch.numpy()), self.config.epochs):
                self._run_epoch(epoch)
                if epoch + 1 < self.config.epochs and distribute.any_worker(self.strategy,
                                                                            self._stop_now()):
                    raise StopRequested(f"stopped after epoch {epoch + 1}")
        except DivergedError as e:
            kept = kept_checkpoints(self.workdir)
            raise DivergedError(f"{e}; kept: {kept}, nothing after the last good step was written"
                                if kept else f"{e}; no checkpoint had been written, so nothing is "
                                "kept") from None
        return self.history

    def _repair_records(self) -> None:
        """Brings the records derived from the resume state up to date after a kill between the
        end-of-epoch writes (see `_end_epoch`): the last epoch's ``on_epoch_end`` again (events,
        evaluation: the weights are that epoch's) when ``history.json`` does not hold it yet, then
        ``history.json`` rewritten from the resume state."""
        if not self.chief or not self.history:
            return
        path = rundir.join(self.workdir, rundir.HISTORY)
        try:
            saved = rundir.read_json(path, "history", expect=list) if rundir.exists(path) else []
        except rundir.RecordError:
            saved = []
        if _normalized(saved) == _normalized(self.history):
            return
        last = self.history[-1]
        if self.partial is None and not any(r.get("epoch") == last["epoch"] for r in saved
                                            if isinstance(r, dict)):
            for cb in self.callbacks:
                cb.on_epoch_end(last["epoch"], last)
        rundir.write_json(path, self.history)

    def _run_epoch(self, epoch: int) -> None:
        config, spawn_epochs = self.config, self.config.spawn_epochs()
        dataset = self.dataset_fn(epoch)
        self.steps_per_epoch = self.steps_per_epoch or _steps_per_epoch(dataset)
        per_epoch = self.steps_per_epoch
        if epoch == 0 and self._current_step() == 0:
            if 0.0 in spawn_epochs:
                self._save_spawn(0.0)
            elif self.tracker is not None and self.tracker.wants(0, False):
                self._emit_kernel(0.0)
        adversarial = config.adversarial_at(epoch)
        if adversarial not in self.step_fns:
            self.step_fns[adversarial] = self.steps.make(adversarial)
        step_fn = self.step_fns[adversarial]
        self.lr.assign(config.lr_at(epoch))
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, per_epoch)
        # global step -> fractional spawn epochs taken there (several if epochs are short)
        spawns_at: dict[int, list[float]] = {}
        for spawn in spawn_epochs:
            if epoch < spawn < epoch + 1:
                spawns_at.setdefault(batches_before(spawn, per_epoch), []).append(spawn)
        started = time.time()
        loss_sum = correct_sum = example_count = 0.0
        first_batch = 0
        if self.partial is not None and self.partial["epoch"] == epoch:  # resume inside the epoch
            first_batch = self.partial["batches"]
            loss_sum, correct_sum = self.partial["loss_sum"], self.partial["correct"]
            example_count = self.partial["count"]
            started -= self.partial["seconds"]
            dataset = dataset.skip(first_batch)
        self.partial = None
        batches = self.strategy.experimental_distribute_dataset(dataset)
        for batch_index, batch in enumerate(batches, start=first_batch):
            seed = tf.constant([config.effective_data_seed, self._current_step()], tf.int64)
            stop = tf.constant(1.0 if self._stop_now() else 0.0)
            batch_loss, batch_correct, examples, stops = (float(v) for v in step_fn(batch, seed, stop))
            self.step.assign_add(1)
            if not math.isfinite(batch_loss):
                _check_finite(self.model, epoch, self._current_step(), batch_loss)
            loss_sum, correct_sum = loss_sum + batch_loss, correct_sum + batch_correct
            example_count += examples
            for cb in self.callbacks:
                cb.on_batch_end(self._current_step(), {"loss": batch_loss / examples,
                                                       "accuracy": batch_correct / examples})
            for spawn in spawns_at.get(epoch * per_epoch + batch_index + 1, ()):
                self._save_spawn(spawn)
            # One process decides at once; workers of a job stop together, at the step that carried
            # the request (TensorFlow's collectives need them in step).
            stopping = stops > 0 or (not self.multi_worker and self._stop_now())
            if stopping and batch_index + 1 < per_epoch:
                self._write_resume({"epoch": epoch, "batches": batch_index + 1, "loss_sum": loss_sum,
                                    "correct": correct_sum, "count": example_count,
                                    "seconds": time.time() - started})
                raise StopRequested(f"stopped at epoch {epoch + 1}, step {self._current_step()}")
        _check_finite(self.model, epoch, self._current_step())
        self.epoch.assign(epoch + 1)
        row = {"epoch": epoch + 1, "loss": loss_sum / max(example_count, 1),
               "accuracy": correct_sum / max(example_count, 1), "lr": config.lr_at(epoch),
               "adversarial": bool(adversarial), "seconds": time.time() - started}
        self.history.append(row)
        if float(epoch + 1) in spawn_epochs:
            self._save_spawn(float(epoch + 1))
        elif self.tracker is not None and self.tracker.wants(epoch + 1, False):
            self._emit_kernel(float(epoch + 1))
        self._end_epoch(epoch, row)

    def _end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """The end-of-epoch writes, in one order: the resume state (the commit point: a kill before
        it replays the epoch, bit for bit), then what derives from it: the callbacks' records
        (events, evaluation), then ``history.json``, last, so that a history.json that lacks the
        epoch tells a restart (`_repair_records`) to write them again."""
        self._write_resume()
        for cb in self.callbacks:
            cb.on_epoch_end(epoch + 1, row)
        if self.chief:
            rundir.write_json(rundir.join(self.workdir, rundir.HISTORY), self.history)
