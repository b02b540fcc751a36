"""AutoAttack, APGD and the Square black-box attack: the configurations, and ART's implementations.

APGD and Square also run as compiled TensorFlow loops (`tf_ntk.robust.apgd`, `tf_ntk.robust.square`; the strong
ensemble's default, ``implementation="tf"``); ART's stay as the cross-check and for AutoAttack.

ART (``adversarial-robustness-toolbox``) wraps any TensorFlow 2 callable as a classifier, so the
standard, linearized and centered models are attacked alike, through their own input gradients.
ART's AutoAttack runs its attacks in turn, each on the examples still classified correctly, and
keeps a perturbation only when it misclassifies within the ε-ball:

1. APGD-CE: auto-step-size PGD on the cross-entropy (Croce & Hein 2020);
2. APGD-DLR: the same on the scale-invariant difference-of-logits ratio;
3. DeepFool (in ART's ensemble where the original AutoAttack has FAB, which ART does not ship);
4. Square: a score-based black-box random search, blind to gradient masking.

ε is in [0, 1] pixel units (L∞) or L2 units; images are float32 NHWC in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import dataclasses
import functools
import logging
import logging.config
from typing import Any
import warnings

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from tf_ntk.robust import apgd
from tf_ntk.robust import square


def _import_art() -> None:
    """Imports ART without its side effects on the process. On import ART warns about its
    PyTorch-only modules and calls `logging.config.dictConfig`, which closes every logging handler
    that exists (absl's, a test runner's) and disables every existing logger. Its configuration
    only attaches handlers to its own loggers, so it is skipped here; ART's logger gets a
    NullHandler instead."""
    configure = logging.config.dictConfig
    logging.config.dictConfig = lambda config: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import art  # noqa: PLC0415, F401
    finally:
        logging.config.dictConfig = configure
    logging.getLogger("art").addHandler(logging.NullHandler())


_import_art()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from art.attacks.evasion import AutoAttack as _ArtAutoAttack
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.attacks.evasion import DeepFool
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import TensorFlowV2Classifier

_ART_NORMS = {"linf": np.inf, "l2": 2}


def classifier(model_fn: Callable[[tf.Tensor], tf.Tensor], input_shape: Sequence[int],
               num_classes: int) -> TensorFlowV2Classifier:
    """An ART `TensorFlowV2Classifier` of ``model_fn`` (images (N, *input_shape) -> logits (N, O)).

    ART calls ``model(x, training=...)``; the wrapper drops ``training`` (``model_fn`` already fixes
    BN to inference mode) and compiles ``model_fn`` once.
    """
    compiled = tf.function(model_fn, reduce_retracing=True)

    def model(x: tf.Tensor | np.ndarray, training: bool = False) -> tf.Tensor:
        del training
        return compiled(tf.cast(x, tf.float32))

    return TensorFlowV2Classifier(
        model=model, nb_classes=int(num_classes), input_shape=tuple(int(d) for d in input_shape),
        loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0))


def _seeded(seed: int) -> None:
    """ART draws its random starts from NumPy's global generator: seed it for repeatable numbers."""
    np.random.seed(int(seed) % 2**32)


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig:
    """ART's AutoAttack ensemble (APGD-CE, APGD-DLR, DeepFool, Square), untargeted.

    Defaults are ART's: 100 APGD iterations with 5 random starts each, Square with 5000 queries and
    5 restarts. ``apgd_step`` is APGD's initial step (default 2ε, Croce & Hein's choice; APGD adapts
    it). Smaller budgets are for tests only.
    """

    eps: float
    norm: str = "linf"
    apgd_steps: int = 100
    apgd_restarts: int = 5
    deepfool: bool = True
    square_queries: int = 5000
    square_restarts: int = 5
    batch_size: int = 128

    name = "autoattack"

    def __post_init__(self) -> None:
        if self.norm not in _ART_NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; known norms: {', '.join(_ART_NORMS)}")
        if not np.isfinite(self.eps) or self.eps <= 0:
            raise ValueError(f"AutoAttack needs a finite eps > 0, got {self.eps}")
        for field in ("apgd_steps", "apgd_restarts", "square_queries", "square_restarts", "batch_size"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")

    def describe(self) -> str:
        return (f"{self.norm} AutoAttack (ART) eps={self.eps:.4g}: APGD-CE/APGD-DLR "
                f"{self.apgd_steps} steps x{self.apgd_restarts}"
                f"{', DeepFool' if self.deepfool else ''}, Square {self.square_queries} queries "
                f"x{self.square_restarts}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}

    def attacks(self, estimator: TensorFlowV2Classifier) -> list[Any]:
        norm = _ART_NORMS[self.norm]
        apgd = dict(estimator=estimator, norm=norm, eps=self.eps, eps_step=2 * self.eps,
                    max_iter=self.apgd_steps, targeted=False, nb_random_init=self.apgd_restarts,
                    batch_size=self.batch_size, verbose=False)
        members = [AutoProjectedGradientDescent(loss_type="cross_entropy", **apgd),
                   AutoProjectedGradientDescent(loss_type="difference_logits_ratio", **apgd)]
        if self.deepfool:
            members.append(DeepFool(classifier=estimator, max_iter=100, epsilon=1e-3, nb_grads=10,
                                    batch_size=self.batch_size, verbose=False))
        members.append(SquareAttack(estimator=estimator, norm=norm, eps=self.eps,
                                    max_iter=self.square_queries, p_init=0.8,
                                    nb_restarts=self.square_restarts, batch_size=self.batch_size,
                                    verbose=False))
        return members

    def generate(self, model_fn: Callable[[tf.Tensor], tf.Tensor], x: np.ndarray, y: npt.ArrayLike, num_classes: int,
                 seed: int = 0) -> np.ndarray:
        """Adversarial images (N, H, W, C) float32 for ``x`` (N, H, W, C), labels ``y`` (N,)."""
        estimator = classifier(model_fn, x.shape[1:], num_classes)
        _seeded(seed)
        attack = _ArtAutoAttack(estimator, norm=_ART_NORMS[self.norm], eps=self.eps,
                                eps_step=2 * self.eps, attacks=self.attacks(estimator),
                                batch_size=self.batch_size)
        return attack.generate(x=np.asarray(x, np.float32), y=np.asarray(y)).astype(np.float32)


IMPLEMENTATIONS = ("tf", "art")
"""Of the strong ensemble's APGD and Square members: one compiled TensorFlow loop each (`tf_ntk.robust.apgd`,
`tf_ntk.robust.square`), or ART's (NumPy, one TensorFlow call per step)."""


@dataclasses.dataclass(frozen=True)
class APGDConfig:
    """APGD alone (Croce & Hein 2020): PGD with momentum and a step size that halves when
    progress stalls, from 2ε; untargeted, on the cross-entropy (``loss="ce"``) or the DLR loss.
    A member of the strong ensemble (`tf_ntk.robust.ensembles.strong`). ``implementation``: ART's
    (``"art"``) or the TensorFlow loop of `tf_ntk.robust.apgd` (``"tf"``: compiled like the PGD members,
    its random starts keyed per example like theirs)."""

    eps: float
    norm: str = "linf"
    loss: str = "ce"
    steps: int = 100
    restarts: int = 5
    batch_size: int = 128
    implementation: str = "art"

    name = "apgd"
    _LOSSES = {"ce": "cross_entropy", "dlr": "difference_logits_ratio"}

    def __post_init__(self) -> None:
        if self.loss not in self._LOSSES:
            raise ValueError(f"unknown APGD loss {self.loss!r}; known: {', '.join(self._LOSSES)}")
        if self.norm not in _ART_NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; known norms: {', '.join(_ART_NORMS)}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"unknown APGD implementation {self.implementation!r}; known: "
                             f"{', '.join(IMPLEMENTATIONS)}")

    @property
    def compiled(self) -> bool:
        """Whether it runs as a TensorFlow function of a batch (`attack`), like the PGD members."""
        return self.implementation == "tf"

    def describe(self) -> str:
        return (f"{self.norm} APGD-{self.loss.upper()} ({self.implementation.upper()}) "
                f"eps={self.eps:.4g} {self.steps} steps x{self.restarts}")

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        if self.implementation == "art":  # records (and random-start keys) of ART's as before
            del fields["implementation"]
        return {"name": self.name, **fields}

    def short(self) -> str:
        return f"APGD-{self.loss.upper()}{' (TF)' if self.compiled else ''} x{self.restarts}"

    def attack(self, model_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, y: tf.Tensor,
               seed: int | tf.Tensor | None = None, example_rows: tuple[Any, Any] | None = None) -> tf.Tensor:
        """The TensorFlow implementation's adversarial images for a batch (see `tf_ntk.robust.apgd.apgd`)."""
        return apgd.apgd(model_fn, x, y, eps=self.eps, steps=self.steps, norm=self.norm,
                         loss=self.loss, restarts=self.restarts, seed=seed, example_rows=example_rows)

    def family(self) -> tuple[tuple[str, str, int], Callable[..., tf.Tensor]]:
        """(key, run): APGD-CE and APGD-DLR of one norm and number of steps share one traced
        function ``run(model_fn, x, y, params, seed=, example_rows=)`` (`tf_ntk.robust.apgd.apgd_by_params`)."""
        return ("apgd", self.norm, self.steps), functools.partial(apgd.apgd_by_params, norm=self.norm,
                                                                  steps=self.steps)

    def params(self) -> dict[str, np.generic]:
        """eps, loss and restarts as `tf_ntk.robust.apgd.apgd_by_params` takes them."""
        return apgd.params(eps=self.eps, loss=self.loss, restarts=self.restarts)

    def replace(self, **changes: Any) -> APGDConfig:
        """A copy with the fields among ``changes`` (eps, steps, restarts, ...) changed; PGD-only
        fields (step size, schedule) do not apply to APGD and are ignored."""
        fields = dataclasses.asdict(self)
        return APGDConfig(**{**fields, **{k: v for k, v in changes.items() if k in fields}})

    def generate(self, model_fn: Callable[[tf.Tensor], tf.Tensor], x: np.ndarray, y: npt.ArrayLike, num_classes: int,
                 seed: int = 0) -> np.ndarray:
        """Adversarial images (N, H, W, C) float32 for ``x``, true labels ``y`` (N,)."""
        estimator = classifier(model_fn, x.shape[1:], num_classes)
        _seeded(seed)
        attack = AutoProjectedGradientDescent(
            estimator=estimator, norm=_ART_NORMS[self.norm], eps=self.eps, eps_step=2 * self.eps,
            max_iter=self.steps, targeted=False, nb_random_init=self.restarts,
            batch_size=self.batch_size, loss_type=self._LOSSES[self.loss], verbose=False)
        onehot = np.eye(int(num_classes), dtype=np.float32)[np.asarray(y)]
        return attack.generate(x=np.asarray(x, np.float32), y=onehot).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class SquareConfig:
    """The Square attack alone (Andriushchenko et al. 2020): the black-box member of the strong
    ensemble and the black-box check of the sanity report. It never reads a gradient, so a model
    that masks gradients does not fool it. ``implementation``: the compiled loop of `tf_ntk.robust.square`
    (``"tf"``, L∞ only) or ART's (``"art"``; the one for L2)."""

    eps: float
    norm: str = "linf"
    queries: int = 1000
    restarts: int = 1
    batch_size: int = 128
    implementation: str = "art"

    name = "square"
    blackbox = True  # the sanity report compares it with the gradient-based members
    p_init = 0.8  # the first window's share of the image (ART's and the paper's default)

    def __post_init__(self) -> None:
        if self.norm not in _ART_NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; known norms: {', '.join(_ART_NORMS)}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"unknown Square implementation {self.implementation!r}; known: "
                             f"{', '.join(IMPLEMENTATIONS)}")
        if self.implementation == "tf" and self.norm != "linf":
            raise ValueError("the TensorFlow Square attack is L∞ only; use implementation='art' for "
                             f"{self.norm}")

    @property
    def compiled(self) -> bool:
        """Whether it runs as a TensorFlow function of a batch, like the PGD members."""
        return self.implementation == "tf"

    def short(self) -> str:
        return f"Square-{self.queries}{' (TF)' if self.compiled else ''} x{self.restarts}"

    def replace(self, **changes: Any) -> SquareConfig:
        """A copy with the fields among ``changes`` (eps, restarts, ...) changed; gradient-attack
        fields (steps, step size, schedule) do not apply to Square and are ignored. An L2 copy of a
        TensorFlow Square is ART's."""
        fields = dataclasses.asdict(self)
        fields.update({k: v for k, v in changes.items() if k in fields})
        if fields["norm"] != "linf" and "implementation" not in changes:
            fields["implementation"] = "art"
        return SquareConfig(**fields)

    def describe(self) -> str:
        return (f"{self.norm} Square ({self.implementation.upper()}, black-box) eps={self.eps:.4g} "
                f"{self.queries} queries x{self.restarts}")

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        if self.implementation == "art":  # records (and random keys) of ART's as before
            del fields["implementation"]
        return {"name": self.name, **fields}

    def attack(self, model_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, y: tf.Tensor,
               seed: int | tf.Tensor | None = None, example_rows: tuple[Any, Any] | None = None) -> tf.Tensor:
        """The TensorFlow implementation's adversarial images for a batch (`tf_ntk.robust.square.square`)."""
        return square.square(model_fn, x, y, eps=self.eps, queries=self.queries,
                             restarts=self.restarts, p_init=self.p_init, seed=seed,
                             example_rows=example_rows)

    def family(self) -> tuple[tuple[str, str, int], Callable[..., tf.Tensor]]:
        """(key, run): Square attacks with one number of queries share one traced function."""
        return ("square", self.norm, self.queries), functools.partial(square.square_by_params,
                                                                      queries=self.queries)

    def params(self) -> dict[str, np.generic]:
        """eps, restarts and p_init as `tf_ntk.robust.square.square_by_params` takes them."""
        return square.params(eps=self.eps, restarts=self.restarts, p_init=self.p_init)

    def generate(self, model_fn: Callable[[tf.Tensor], tf.Tensor], x: np.ndarray, y: npt.ArrayLike, num_classes: int,
                 seed: int = 0) -> np.ndarray:
        """ART's adversarial images (N, H, W, C) float32 (unsuccessful examples come back unchanged)."""
        estimator = classifier(model_fn, x.shape[1:], num_classes)
        _seeded(seed)
        attack = SquareAttack(estimator=estimator, norm=_ART_NORMS[self.norm], eps=self.eps,
                              max_iter=self.queries, p_init=self.p_init, nb_restarts=self.restarts,
                              batch_size=self.batch_size, verbose=False)
        onehot = np.eye(int(num_classes), dtype=np.float32)[np.asarray(y)]
        return attack.generate(x=np.asarray(x, np.float32), y=onehot).astype(np.float32)
