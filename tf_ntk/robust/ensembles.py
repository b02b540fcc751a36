"""Robust accuracy a reviewer would accept: named attacks and the worst case per example.

Three named attacks (`named`):

- ``protocol``: the paper's evaluation, L∞ PGD-100, step 2ε/100, one random start, cross-entropy,
  last iterate. Kept for comparability with the paper.
- ``strong`` (the default for reported numbers): an ensemble (`strong`) of PGD attacks with
  cross-entropy, CW-margin, DLR and targeted-margin losses, random restarts, a constant and a
  cosine-decaying step, every iterate counted, then APGD-CE, APGD-DLR and Square (compiled
  TensorFlow loops, `tf_ntk.robust.apgd` and `tf_ntk.robust.square`, or ART's). An example
  is robust only if no member misclassifies it; members run in turn on the examples still robust,
  as AutoAttack does.
- ``autoattack``: ART's AutoAttack ensemble (`tf_ntk.robust.autoattack`).

Robust accuracy follows RobustBench: an example counts as robust when its clean image and every
adversarial image crafted for it are classified correctly. ε is in [0, 1] pixel units (L∞) or L2
units; images are float32 NHWC in [0, 1]; labels int (N,).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
import contextlib
import dataclasses
import hashlib
import json
from typing import Any
import zlib

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from tf_ntk import rundir
from tf_ntk.robust import attacks
from tf_ntk.robust import autoattack

NAMES = ("protocol", "strong", "autoattack")
ROBUST, CLEAN_WRONG = -1, -2  # `AttackResult.broken_by` codes


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """PGD attacks whose worst case per example is the result; see `strong`."""

    members: tuple
    name: str = "ensemble"

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an attack ensemble needs at least one member")
        object.__setattr__(self, "members", tuple(
            attacks.PGDConfig(**m) if isinstance(m, dict) else m for m in self.members))

    @property
    def eps(self) -> float:
        return self.members[0].eps

    @property
    def norm(self) -> str:
        return self.members[0].norm

    def replace(self, **changes: Any) -> Ensemble:
        """Every member with ``changes`` (see `attacks.PGDConfig.replace`)."""
        return Ensemble(tuple(m.replace(**changes) for m in self.members), self.name)

    def whitebox(self) -> Ensemble | None:
        """The ensemble without its black-box members (None if none are left)."""
        members = tuple(m for m in self.members if not getattr(m, "blackbox", False))
        return Ensemble(members, self.name + " (white-box part)") if members else None

    def describe(self) -> str:
        return f"{self.name}: " + "; ".join(m.describe() for m in self.members)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "members": [m.to_dict() for m in self.members]}


# What `evaluate` runs: one attack, or an ensemble of them.
_Attack = attacks.PGDConfig | Ensemble | autoattack.AutoAttackConfig | autoattack.APGDConfig | autoattack.SquareConfig


def strong(eps: float, norm: str = "linf", *, steps: int = 100, restarts: int = 10, targets: int = 3, apgd: bool = True,
           apgd_restarts: int | None = None, square_queries: int = 5000, implementation: str = "tf") -> Ensemble:
    """The strong evaluation ensemble at radius ``eps``.

    Members, each ``steps`` steps from uniform random starts, every iterate counted (keep="best"),
    in the order they run:

    - PGD-CE and PGD-margin with Madry's constant step 2.5ε/steps, ``restarts`` starts each: the
      plain PGD a reviewer would try first;
    - PGD-CE, PGD-margin and PGD-DLR with a cosine-decaying step from ε (large steps explore the
      ball's corners, small ones converge), ``restarts`` starts each;
    - targeted-margin PGD towards each of the ``targets`` most likely wrong classes (AutoAttack's
      APGD-T idea), cosine step from ε, one start each;
    - with ``apgd``: APGD-CE and APGD-DLR (momentum, adaptive step; ``apgd_restarts`` starts,
      default ``restarts``), AutoAttack's white-box core, on what the PGD members left;
    - the Square attack with ``square_queries`` queries (0: none), one start: a black-box
      search that finds what gradient steps miss where the loss surface is obfuscated.

    ``implementation``: APGD and Square as compiled TensorFlow loops (``"tf"``: `tf_ntk.robust.apgd`,
    `tf_ntk.robust.square`; L2 Square is ART's) or ART's (``"art"``: NumPy, one TensorFlow call per step,
    7x slower on the quick preset's models; bench/results/evaluation_profile.txt). Either way every
    member is one traced function per family, shared by all of them (`evaluate`).

    On a centered digits CNN (README, "Attacks and evaluation"; measured with ART's APGD at 5 starts
    and ART's Square), each group breaks examples the groups before it left robust, and with 10
    restarts the result equals the worst case of this ensemble and ART's AutoAttack together (5
    restarts left 5 examples to 3x more restarts).
    """
    constant: dict[str, Any] = dict(eps=eps, norm=norm, steps=steps, step_size=2.5 * eps / steps, keep="best",
                                    restarts=restarts)
    cosine: dict[str, Any] = dict(eps=eps, norm=norm, steps=steps, step_size=eps, keep="best", schedule="cosine")
    members: list[Any] = [attacks.PGDConfig(loss="ce", **constant),
                          attacks.PGDConfig(loss="margin", **constant)]
    members += [attacks.PGDConfig(loss=loss, restarts=restarts, **cosine) for loss in ("ce", "margin", "dlr")]
    members += [attacks.PGDConfig(loss="margin", target_rank=k, **cosine) for k in range(1, targets + 1)]
    if apgd and eps > 0:

        members += [autoattack.APGDConfig(eps=eps, norm=norm, loss=loss, steps=steps,
                                          restarts=apgd_restarts or restarts,
                                          implementation=implementation)
                    for loss in ("ce", "dlr")]
    if square_queries and eps > 0:
        square = implementation if norm == "linf" else "art"
        members.append(autoattack.SquareConfig(eps=eps, norm=norm, queries=square_queries,
                                               implementation=square))
    return Ensemble(tuple(members), "strong")


def protocol(eps: float, norm: str = "linf", *, steps: int = 100) -> attacks.PGDConfig:
    """The paper's evaluation PGD: ``steps`` steps of 2ε/steps, one random start, CE, last iterate."""
    return attacks.PGDConfig(eps=eps, norm=norm, steps=steps)


def named(name: str, eps: float, norm: str = "linf",
          **options: Any) -> attacks.PGDConfig | Ensemble | autoattack.AutoAttackConfig:
    """The attack called ``name`` (one of `NAMES`) at radius ``eps``; ``options`` go to its builder
    (`protocol`, `strong` or `tf_ntk.robust.autoattack.AutoAttackConfig`)."""
    if name == "protocol":
        return protocol(eps, norm, **options)
    if name == "strong":
        return strong(eps, norm, **options)
    if name == "autoattack":

        return autoattack.AutoAttackConfig(eps=eps, norm=norm, **options)
    raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(NAMES)}")


@dataclasses.dataclass
class AttackResult:
    """Per-example outcome of an attack.

    Attributes:
      x_adv: (N, H, W, C) float32, the adversarial image that broke each example; for an example
        still robust, the last attack's image; the clean image where the clean image is already
        misclassified (or no attack crafted one).
      correct: (N,) bool, clean and adversarial images both classified correctly.
      broken_by: (N,) int: the index in ``members`` of the first attack that broke the example,
        ``ROBUST`` (-1) if none did, ``CLEAN_WRONG`` (-2) if the clean image is misclassified.
      members: names of the attacks, in the order they ran.
      rejected: crafted images discarded for lying outside the ε-ball or [0, 1], or not being
        finite (0 for a sound attack; the sanity report checks it).
    """

    x_adv: np.ndarray
    correct: np.ndarray
    broken_by: np.ndarray
    members: list
    rejected: int = 0

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct))

    @property
    def clean_correct(self) -> np.ndarray:
        """(N,) bool: the clean image classified correctly (the clean pass every evaluation starts
        with, or the one of the result it continued from); ``correct`` implies it."""
        return self.broken_by != CLEAN_WRONG

    def breaks(self) -> dict[str, int]:
        """{member: number of examples it broke first}."""
        return {m: int(np.sum(self.broken_by == i)) for i, m in enumerate(self.members)}


_TRACES = "_tf_ntk_traces"  # the attribute of a model_fn that holds its traced attack functions


def _functions(model_fn: Callable[[tf.Tensor], tf.Tensor]) -> dict[tuple, Any]:
    """The traced functions of ``model_fn`` ({key: tf.function}), kept on the callable itself so that
    every evaluation of one model (the protocol attack, each member of an ensemble, a later call)
    reuses them, and they go with it."""
    table = getattr(model_fn, _TRACES, None)
    if table is None:
        table = {}
        # (a callable without attributes, such as a bound method: the functions serve this call only)
        with contextlib.suppress(AttributeError):
            setattr(model_fn, _TRACES, table)
    return table


def _predict_fn(model_fn: Callable[[tf.Tensor], tf.Tensor], image_shape: tuple[int, ...],
                jit_compile: bool) -> Callable[[tf.Tensor], tf.Tensor]:
    table = _functions(model_fn)
    key = ("predict", image_shape, jit_compile)
    if key not in table:
        table[key] = tf.function(
            lambda x: tf.argmax(model_fn(x), axis=-1, output_type=tf.int32), jit_compile=jit_compile,
            input_signature=[tf.TensorSpec((None, *image_shape), tf.float32)])
    return table[key]


def _attack_fn(model_fn: Callable[[tf.Tensor], tf.Tensor], family: tuple, run: Callable[..., tf.Tensor],
               image_shape: tuple[int, ...], params: Mapping[str, Any], jit_compile: bool) -> Callable[..., tf.Tensor]:
    """One traced function per attack family (kind, norm, steps) of ``model_fn``: its configuration
    (ε, loss, restarts, ...) comes in as tensors, so the members of an ensemble and the protocol
    attack share one trace. Batches of any size (one trace; under XLA one compilation per size)."""
    table = _functions(model_fn)
    key = (family, image_shape, jit_compile)
    if key not in table:
        signature = [tf.TensorSpec((None, *image_shape), tf.float32), tf.TensorSpec((None,), tf.int32),
                     tf.TensorSpec((None,), tf.int32), tf.TensorSpec((), tf.int32),
                     {k: tf.TensorSpec((), tf.as_dtype(np.asarray(v).dtype)) for k, v in params.items()},
                     tf.TensorSpec((2,), tf.int64)]
        table[key] = tf.function(
            lambda x, y, rows, total, params, seed: run(model_fn, x, y, params, seed=seed,
                                                        example_rows=(rows, total)),
            jit_compile=jit_compile, input_signature=signature)
    return table[key]


def _batches(indices: np.ndarray, batch_size: int, pad: bool) -> Iterator[tuple[np.ndarray, int]]:
    """Index batches of ``batch_size``; with ``pad`` the last is padded by repeating its first index
    to the next power of two (at most ``batch_size``), so that XLA compiles a few static shapes.
    Yields (indices, number of real ones)."""
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        real = len(chunk)
        if pad and real < batch_size:
            size = min(batch_size, 1 << (real - 1).bit_length())
            chunk = np.concatenate([chunk, np.full(size - real, chunk[0])])
        yield chunk, real


class _Runner:
    """Runs attacks on NumPy arrays, each on the examples still robust; one traced function per
    attack family and one for predictions, shared by every call on the same ``model_fn``."""

    def __init__(self, model_fn: Callable[[tf.Tensor], tf.Tensor], x: npt.ArrayLike, y: npt.ArrayLike, *,
                 num_classes: int, batch_size: int, jit_compile: bool, seed: int,
                 progress: Callable[[int], Any] | None) -> None:
        self.model_fn, self.x, self.y = model_fn, np.asarray(x, np.float32), np.asarray(y, np.int32)
        self.num_classes, self.batch_size, self.seed = num_classes, batch_size, int(seed)
        self.jit_compile, self.progress = jit_compile, progress
        self.predict = _predict_fn(model_fn, self.x.shape[1:], jit_compile)
        self.done = 0

    def predictions(self, images: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        indices = np.arange(len(images)) if indices is None else indices
        out = np.empty(len(indices), np.int32)
        for chunk, real in _batches(np.arange(len(indices)), self.batch_size, self.jit_compile):
            out[chunk[:real]] = self.predict(images[indices[chunk]]).numpy()[:real]
        return out

    def craft(self, attack: Any, indices: np.ndarray) -> np.ndarray:
        """Adversarial images for ``self.x[indices]`` (K, ...) from ``attack``."""
        config_key = zlib.crc32(json.dumps(attack.to_dict(), sort_keys=True).encode())
        if not (isinstance(attack, attacks.PGDConfig) or getattr(attack, "compiled", False)):
            # ART attacks run on NumPy arrays
            out = attack.generate(self.model_fn, self.x[indices], self.y[indices], self.num_classes,
                                  seed=self.seed * 7919 + config_key)
            self._tick(len(indices))
            return out
        family, run = attack.family()
        params = attack.params()
        fn = _attack_fn(self.model_fn, family, run, self.x.shape[1:], params, self.jit_compile)
        params = {k: tf.constant(v) for k, v in params.items()}
        # One key per attack configuration: an example's random starts depend on (seed, attack,
        # example) only, not on the attack's place in an ensemble or on the other examples still
        # being attacked alongside it.
        key = tf.constant([self.seed, config_key], tf.int64)
        total = tf.constant(len(self.y), tf.int32)
        out = np.empty((len(indices),) + self.x.shape[1:], np.float32)
        for chunk, real in _batches(np.arange(len(indices)), self.batch_size, self.jit_compile):
            rows = indices[chunk].astype(np.int32)
            out[chunk[:real]] = fn(self.x[rows], self.y[rows], rows, total, params, key).numpy()[:real]
            self._tick(real)
        return out

    def _tick(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done)


def members(attack: _Attack) -> list[Any]:
    """The attacks an attack stands for: an ensemble's members, or the attack itself."""
    if isinstance(attack, Ensemble):
        return list(attack.members)
    return [attack]


def worst_case(results: Sequence[AttackResult]) -> tuple[np.ndarray, np.ndarray]:
    """(correct (N,) bool, x_adv (N, ...)) over `AttackResult`s of independent attacks on the same
    examples: an example is robust only if every attack left it right; its adversarial image is the
    one of the first attack that broke it, else the last attack's. (`evaluate` with ``start=``
    attacks only what an earlier result left standing; this combines results already computed.)"""
    if not results:
        raise ValueError("worst_case needs at least one attack result")
    correct = np.ones(len(results[0].correct), bool)
    x_adv = results[-1].x_adv.copy()
    for r in results:
        hit = correct & ~r.correct
        x_adv[hit] = r.x_adv[hit]
        correct &= r.correct
    return correct, x_adv


def evaluate(model_fn: Callable[[tf.Tensor], tf.Tensor], x: npt.ArrayLike, y: npt.ArrayLike,
             attack: _Attack,
             *, seed: int = 0, batch_size: int = 256, jit_compile: bool = False,
             progress: Callable[[int], Any] | None = None, num_classes: int | None = None,
             start: AttackResult | None = None, resume_dir: str | None = None,
             resume_tag: str = "") -> AttackResult:
    """Attacks ``x`` (N, H, W, C), labels ``y`` (N,) with ``attack`` and returns an `AttackResult`.

    Args:
      model_fn: one stable callable images -> logits (N, O), BN in inference mode
        (`tf_ntk.robust.evaluation.inference_fn`).
      attack: a `attacks.PGDConfig` (the protocol's kind: every example attacked once), an
        `Ensemble` (members in turn, each on the examples no earlier member broke), or an ART
        attack (`tf_ntk.robust.autoattack`). PGD random starts depend on (seed, attack configuration,
        example index) only, so an example meets the same starts in an ensemble as in a member alone.
      seed: the same seed gives the same result (ART attacks: NumPy's global generator is seeded).
      progress: ``progress(examples_attacked)`` after each batch.
      num_classes: number of logits (default: from one forward pass).
      start: an earlier `AttackResult` on the same inputs to continue: only the examples it left
        robust are attacked, and its members come first. Continuing with attack B from the result
        of attack A gives the worst case of A and B.
      resume_dir: a directory (any `tf.io.gfile` file system) where the outcome is saved after each
        member, under a key of the attack, seed, batch size, inputs, ``start`` and ``resume_tag``;
        a later call with the same key continues after the last member saved (a finished call
        returns at once), with the same result as one uninterrupted call. The key does not see
        the model: give each model its own directory, or its fingerprint as ``resume_tag``.

    The traced attack functions are kept on ``model_fn`` (an attribute) and serve every later call
    with it, whatever weights its variables then hold; a ``model_fn`` must compute from variables,
    not from Python values it may change later.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    if len(y) == 0:
        raise ValueError("cannot compute robust accuracy on an empty dataset")
    if num_classes is None:
        num_classes = int(model_fn(tf.constant(x[:1])).shape[-1])
    runner = _Runner(model_fn, x, y, num_classes=num_classes, batch_size=batch_size,
                     jit_compile=jit_compile, seed=seed, progress=progress)
    attack_members = members(attack)
    _check_classes(attack_members, num_classes)
    offset = 0 if start is None else len(start.members)
    saved_path = None
    if resume_dir is not None:
        key = _resume_key(attack, seed, batch_size, jit_compile, x, y, start, resume_tag)
        saved_path = rundir.join(resume_dir, f"attack-{key}.npz")
    saved = rundir.read_npz(saved_path) if saved_path is not None and rundir.exists(saved_path) else None
    if saved is not None:
        x_adv, broken_by = saved["x_adv"].copy(), saved["broken_by"].copy()
        names, rejected = json.loads(str(saved["names"])), int(saved["rejected"])
    elif start is None:
        x_adv = x.copy()
        broken_by = np.where(runner.predictions(x) == y, ROBUST, CLEAN_WRONG)
        names, rejected = [], 0
    else:
        x_adv, broken_by, names = start.x_adv.copy(), start.broken_by.copy(), list(start.members)
        rejected = start.rejected
    if saved is not None and names[offset:] != [m.describe() for m in attack_members][:len(names) - offset]:
        raise ValueError(f"{saved_path} holds the progress of other attacks ({', '.join(names[offset:])}); "
                         "remove it")
    for i, member in enumerate(attack_members):
        index = offset + i
        if index < len(names):
            continue  # saved by an earlier, interrupted call
        names.append(member.describe())
        everyone = isinstance(attack, attacks.PGDConfig)  # the protocol attacks all examples
        indices = np.arange(len(y)) if everyone else np.flatnonzero(broken_by == ROBUST)
        if len(indices) == 0 or (member.eps == 0 and not isinstance(member, attacks.PGDConfig)):
            continue  # (ART's attacks refuse ε = 0, where nothing can be broken)
        crafted = runner.craft(member, indices)
        wrong = runner.predictions(crafted) != y[indices]
        inside = _inside(crafted, x[indices], member.eps, member.norm)
        rejected += int(np.sum(~inside))
        wrong &= inside
        open_ = broken_by[indices] == ROBUST
        hit = wrong & open_
        # Examples still robust keep this attack's image (inside the ball): a saved set then
        # holds an adversarial image for every attacked example, for transfer attacks.
        keep = open_ & inside
        x_adv[indices[keep]] = crafted[keep]
        broken_by[indices[hit]] = index
        if saved_path is not None:
            rundir.write_npz(saved_path, x_adv=x_adv, broken_by=broken_by, rejected=np.int64(rejected),
                             names=np.array(json.dumps(names)))
    return AttackResult(x_adv=x_adv, correct=broken_by == ROBUST, broken_by=broken_by, members=names,
                        rejected=rejected)


def _resume_key(attack: Any, seed: int, batch_size: int, jit_compile: bool, x: np.ndarray, y: np.ndarray,
                start: AttackResult | None, tag: str) -> str:
    """The name under which `evaluate` saves its progress: a hash of everything its result depends on
    but the model."""
    digest = hashlib.sha256()
    header = {"format": 1, "attack": attack.to_dict(), "seed": int(seed), "batch_size": int(batch_size),
              "jit_compile": bool(jit_compile), "shape": list(x.shape), "tag": tag}
    digest.update(json.dumps(header, sort_keys=True).encode())
    arrays = [x, y] if start is None else [x, y, start.x_adv, start.broken_by]
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    if start is not None:
        digest.update(json.dumps([list(start.members), int(start.rejected)]).encode())
    return digest.hexdigest()[:24]


def _check_classes(members: Sequence[Any], num_classes: int) -> None:
    """A one-line error when a loss needs more classes than the model has."""
    for m in members:
        need = 3 if getattr(m, "loss", None) == "dlr" else getattr(m, "target_rank", 0) + 1
        if num_classes < need:
            raise ValueError(f"attack {m.short()} needs at least {need} classes; the model has "
                             f"{num_classes}")


def ball_limit(eps: float) -> float:
    """The largest perturbation size that counts as inside an ε-ball of radius ``eps``: ``eps`` plus
    float32 rounding, 1e-5 relative and 1e-6 absolute (pixel units)."""
    return eps * (1 + 1e-5) + 1e-6


def perturbation_size(x_adv: npt.ArrayLike, x: np.ndarray, norm: str) -> np.ndarray:
    """(K,): the ``norm`` ("linf" or "l2") of each x_adv − x over (K, H, W, C) images, in their
    dtype; inf where a difference is not finite."""
    delta = (np.asarray(x_adv) - np.asarray(x)).reshape(len(x), -1)
    delta = np.where(np.isfinite(delta), delta, np.inf)
    if delta.shape[1] == 0:
        return np.zeros(len(x))
    return np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)


def _inside(x_adv: np.ndarray, x: np.ndarray, eps: float, norm: str) -> np.ndarray:
    """(K,) bool: finite, inside the ε-ball (up to `ball_limit`) and [0, 1]."""
    finite = np.isfinite(x_adv.reshape(len(x), -1)).all(axis=1)
    size = perturbation_size(x_adv, x, norm)
    flat = x_adv.reshape(len(x), -1)
    return (finite & (size <= ball_limit(eps)) & (flat.min(axis=1) >= 0.0)
            & (flat.max(axis=1) <= 1.0))


def arrays(dataset: Iterable[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(x (N, H, W, C) float32, y (N,) int32) NumPy arrays of a batched ``dataset``."""
    xs, ys = [], []
    for x, y in dataset:
        xs.append(np.asarray(x, np.float32))
        ys.append(np.asarray(y, np.int32))
    if not ys:
        raise ValueError("cannot compute robust accuracy on an empty dataset")
    return np.concatenate(xs), np.concatenate(ys)
