"""The study's presets: complete, validated configurations of the reproduction study (data set,
architecture, seeds, phase-1 and phase-2 schedules, spawn and kernel grids, evaluation strength,
the resources its jobs ask a cluster for), and the names of the compared phase-1 sources.

`tf_ntk.study.plan` turns a preset into the sweep's job graph.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import math
from typing import Any
from typing import cast

from tf_ntk import data

SOURCES = ("standard", "adversarial")  # the compared phase-1 trainings: clean / PGD data
FLIP = "flip"  # phase-1 training on clean data for the first half, on PGD data after
REPLICA = "rep"  # suffix of a matched-floor run: same initialisation, another data seed
REPLICA_DATA_SEED = 10_000  # a replica's data seed: its seed + this (outside every preset's seeds)
PHASE2_DYNAMICS = ("centered", "linearized", "standard")

@dataclasses.dataclass(frozen=True)
class Preset:
    """A complete configuration of the study. Epochs may be fractional only in spawn grids.

    Attributes:
      name, description: what it is for.
      dataset, model, width: data set and architecture (width None: the model's default).
      eps: L∞ radius of training and evaluation attacks, in [0, 1] pixel units.
      seeds, seed_base: the seeds are seed_base … seed_base + seeds − 1 (each preset its own range,
        so that presets are independent replications); every statistic is over seeds.
      batch_size: SGD batch size.
      phase1_epochs, phase1_lr, phase1_lr_boundaries: phase-1 schedule (lr × 0.1 at each boundary).
      train_attack_steps: PGD steps of adversarial training (step 2ε/steps, random start).
      adv_mode: "clean_then_adv" (the authors') or "madry".
      spawn_epochs: phase-1 epochs phase 2 starts from (fractions allowed).
      kernel_epochs: phase-1 epochs at which kernels are measured (checkpoints saved there too).
      phase2_epochs, phase2_lr: phase-2 schedule (constant lr).
      phase2_dynamics: subset of ("centered", "linearized", "standard"); standard dynamics trains on
        clean data only (on PGD data it would be phase-1 adversarial training continued).
      phase2_data: subset of ("clean", "adv").
      phase2_skip: "<dynamics>-<data>" conditions of that product not to run (e.g. "linearized-adv").
      flip: also train the flip source (clean until phase1_epochs // 2, then clean-then-adversarial),
        with its kernel walk, evaluation and centered clean phase 2 from its spawns after the flip.
      matched_floor: train each standard and adversarial run a second time from the same
        initialisation with another data seed (C1's noise floor).
      transfer: PGD examples of every spawn > 0, evaluated on its centered children and on those of
        its sibling (the other source's spawn at the same seed and epoch).
      primary_examples, primary_restarts, primary_square_queries: the evaluation of the primary
        endpoints' checkpoints (phase-1 finals; centered phase 2 from the last spawns): test examples
        (None: the whole test set), strong-ensemble restarts and Square queries, with the sanity report.
      per_class, test_per_class: kernel probe examples per class (train; test for kernel regression).
      eval_examples: test examples evaluated (None: the whole test set).
      eval_steps: steps of the protocol PGD and of the strong ensemble's PGD members.
      strong_restarts, square_queries: restarts of the strong PGD members; Square's queries.
      eigen_images: eigenvectors visualised per final phase-1 kernel (the preset's first seed; 0: none).
      eigen_steps: signed-gradient steps per eigen-image.
      kernel_machine_per_class: training images per class of the kernel machine (tf-ntk-kernel-machine,
        class-balanced; 0: no kernel-machine jobs).
      kernel_machine_epochs: spawn epochs whose kernel machine is evaluated (None: ``spawn_epochs``).
      jit_compile: compile train and attack steps with XLA (TPUs).
      resources: Ray task options per job family for --executor=ray (`job_resources`); they shape
        how the sweep runs, not its numbers (`RUN_ONLY`).
      job_strategy: the tf.distribute strategy of the training and kernel jobs (`strategy_args`):
        "default" (one device), "mirrored" (the host's GPUs) or "tpu" (the TPU VM a job runs on,
        ``--tpu=local``); evaluation, eigen-image and kernel-machine jobs run on the default device.
        Run-only, like ``resources``.
    """

    name: str
    description: str
    dataset: str = "digits"
    model: str = "mlp"
    width: int | None = 256
    eps: float = 0.2
    seeds: int = 3
    seed_base: int = 0
    batch_size: int = 128
    phase1_epochs: int = 20
    phase1_lr: float = 0.05
    phase1_lr_boundaries: tuple = ()
    train_attack_steps: int = 10
    adv_mode: str = "clean_then_adv"
    spawn_epochs: tuple = (0.25, 2.0, 20.0)
    kernel_epochs: tuple = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
    phase2_epochs: int = 20
    phase2_lr: float = 0.01
    phase2_dynamics: tuple = ("centered",)
    phase2_data: tuple = ("clean", "adv")
    phase2_skip: tuple = ()
    flip: bool = False
    matched_floor: bool = True
    transfer: bool = True
    primary_examples: int | None = None
    primary_restarts: int = 10
    primary_square_queries: int = 5000
    per_class: int = 10
    test_per_class: int = 10
    eval_examples: int | None = None
    eval_steps: int = 100
    strong_restarts: int = 10
    square_queries: int = 5000
    eigen_images: int = 2
    eigen_steps: int = 600
    kernel_machine_per_class: int = 20
    kernel_machine_epochs: tuple | None = None
    jit_compile: bool = False
    resources: dict | None = None
    job_strategy: str = "default"

    # Settings that shape how the sweep runs, not its numbers: a sweep directory may be resumed
    # with other values.
    RUN_ONLY = ("resources", "job_strategy")
    JOB_STRATEGIES = ("default", "mirrored", "tpu")

    def __post_init__(self) -> None:
        info = data.info(self.dataset)  # raises on an unknown data set
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.phase1_epochs < 1 or self.phase2_epochs < 1:
            raise ValueError("phase1_epochs and phase2_epochs must be >= 1")
        for name in ("spawn_epochs", "kernel_epochs", "kernel_machine_epochs"):
            bad = [e for e in getattr(self, name) or () if not 0 <= e <= self.phase1_epochs]
            if bad:
                raise ValueError(f"{name} {bad} outside phase 1's [0, {self.phase1_epochs}] epochs")
        if not self.spawn_epochs:
            raise ValueError("spawn_epochs is empty")
        if float(self.phase1_epochs) not in [float(e) for e in self.kernel_epochs]:
            raise ValueError(f"kernel_epochs must include the last epoch {self.phase1_epochs} "
                             "(the final kernel)")
        unknown = set(self.phase2_dynamics) - set(PHASE2_DYNAMICS)
        if unknown or not self.phase2_dynamics:
            raise ValueError(f"phase2_dynamics must be centered, linearized and/or standard, got "
                             f"{','.join(self.phase2_dynamics)}")
        if self.seed_base < 0 or self.seed_base + self.seeds > REPLICA_DATA_SEED:
            raise ValueError(f"seeds must lie in [0, {REPLICA_DATA_SEED})")
        if self.flip and self.phase1_epochs < 2:
            raise ValueError("the flip source needs phase1_epochs >= 2")
        for name in ("primary_examples",):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= info.num_examples["test"]:
                raise ValueError(f"{name} must be in [1, {info.num_examples['test']}]")
        unknown = set(self.phase2_data) - {"clean", "adv"}
        if unknown or not self.phase2_data:
            raise ValueError(f"phase2_data must be clean and/or adv, got {','.join(self.phase2_data)}")
        if {"centered-clean", "centered-adv"} & set(self.phase2_skip):
            raise ValueError("centered phase 2 carries the primary endpoints: it cannot be skipped")
        if "centered" not in self.phase2_dynamics or "clean" not in self.phase2_data:
            raise ValueError("the study needs centered phase 2 on clean data (C2's primary endpoint)")
        if self.eval_examples is not None and not 1 <= self.eval_examples <= info.num_examples["test"]:
            raise ValueError(f"eval_examples must be in [1, {info.num_examples['test']}]")
        if self.kernel_machine_per_class < 0:
            raise ValueError(f"kernel_machine_per_class must be >= 0, got {self.kernel_machine_per_class}")
        for family, options in (self.resources or {}).items():
            unknown = set(options) - {"num_cpus", "num_gpus", "memory", "resources"} if isinstance(
                options, dict) else {"(not an object)"}
            if unknown:
                raise ValueError(f"resources[{family!r}]: unknown Ray task option(s) {', '.join(sorted(unknown))} "
                                 "(num_cpus, num_gpus, memory, resources)")
        if self.job_strategy not in self.JOB_STRATEGIES:
            raise ValueError(f"job_strategy must be one of {', '.join(self.JOB_STRATEGIES)}, got "
                             f"{self.job_strategy}")
        if self.adv_mode not in ("clean_then_adv", "madry"):
            raise ValueError(f"adv_mode must be clean_then_adv or madry, got {self.adv_mode}")

    def replace(self, **changes: Any) -> Preset:
        """A copy with ``changes``; a shorter phase 1 (``phase1_epochs``) without new grids keeps
        the grids' epochs below it and ends both at its last epoch (the final kernel and spawn)."""
        last = changes.get("phase1_epochs")
        if last is not None and last != self.phase1_epochs:
            for grid in ("kernel_epochs", "spawn_epochs", "kernel_machine_epochs"):
                if grid not in changes and getattr(self, grid) is not None:
                    changes[grid] = tuple(e for e in getattr(self, grid) if e < last) + (float(last),)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def numbers_dict(self) -> dict[str, Any]:
        """`to_dict` without the `RUN_ONLY` settings: what a sweep's numbers depend on."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUN_ONLY}

    def strategy_args(self) -> tuple[str, ...]:
        """The command-line flags that put a training or kernel job on `job_strategy`."""
        if self.job_strategy == "default":
            return ()
        return (f"--strategy={self.job_strategy}",) + (("--tpu=local",) if self.job_strategy == "tpu" else ())

    def job_resources(self) -> dict[str, dict[str, Any]]:
        """{job family or "*": Ray task options} (num_cpus, num_gpus, memory in bytes, resources:
        e.g. {"TPU": 4}); default one CPU per job."""
        return self.resources or {"*": {"num_cpus": 1}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preset:
        """The inverse of `to_dict` (after a JSON round trip: lists become tuples)."""
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fields)

    def seed_list(self) -> tuple[int, ...]:
        """The seeds, in order."""
        return tuple(range(self.seed_base, self.seed_base + self.seeds))

    def phase2_conditions(self) -> list[tuple[str, str]]:
        """[(dynamics, data)] of phase 2 (standard dynamics on clean data only)."""
        return [(d, m) for d in self.phase2_dynamics for m in self.phase2_data
                if (d != "standard" or m == "clean") and f"{d}-{m}" not in self.phase2_skip]

    def flip_epoch(self) -> int | None:
        """The flip source's first adversarial epoch (None without it)."""
        return self.phase1_epochs // 2 if self.flip else None

    def last_spawn(self) -> float:
        return float(max(self.spawn_epochs))

    def early_epoch(self) -> float:
        """The kernel epoch nearest 10% of phase 1 (C1b's "rapidly")."""
        target = self.phase1_epochs / 10
        return min((e for e in self.kernel_epochs if e > 0), key=lambda e: (abs(e - target), e))

    def optimizer_steps(self, epoch: float, source: str = "adversarial") -> float:
        """SGD updates a phase-1 run of ``source`` has taken by ``epoch`` (clean-then-adversarial
        training takes two per batch)."""
        steps = epoch * self.steps_per_epoch()
        double = self.adv_mode == "clean_then_adv"
        if source == "adversarial" and double:
            return 2 * steps
        if source == FLIP and double:
            flip = cast(int, self.flip_epoch())  # the flip source exists only with flip
            return steps + max(0.0, epoch - flip) * self.steps_per_epoch()
        return steps

    def steps_per_epoch(self) -> int:
        """SGD steps in one epoch of phase 1 or 2 (the last batch may be short)."""
        return math.ceil(data.info(self.dataset).num_examples["train"] / self.batch_size)

    def save_epochs(self) -> tuple[float, ...]:
        """Phase-1 checkpoint epochs: the spawn, kernel and kernel-machine grids, sorted."""
        return tuple(sorted({float(e) for e in self.spawn_epochs + self.kernel_epochs
                             + (self.kernel_machine_epochs or ())}))

    def machine_epochs(self) -> tuple[float, ...]:
        """The spawn epochs whose kernel machine is evaluated (none without kernel-machine jobs)."""
        if not self.kernel_machine_per_class:
            return ()
        return tuple(float(e) for e in (self.kernel_machine_epochs or self.spawn_epochs))


_DIGITS_GRID = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0,
                36.0, 40.0)
_CIFAR_GRID = tuple(sorted({*map(float, range(101)), 0.125, 0.25, 0.375, 0.5, 0.75, 1.5, 2.5}))
# One accelerator per training, evaluation, kernel and kernel-machine job; the report on a CPU.
_ACCELERATOR_JOBS = {"*": {"num_cpus": 1, "num_gpus": 1}, "report": {"num_cpus": 1}}

PRESETS = {
    "smoke": Preset(
        name="smoke",
        description="The test suite's plumbing check: every job family (flip source, matched "
                    "floors, standard/linearized/centered phase 2, transfer attacks, output terms) "
                    "at 2 seeds, 2 + 1 epochs, a width-16 MLP, 24 test images. Its numbers mean "
                    "nothing.",
        width=16, seeds=2, phase1_epochs=2, spawn_epochs=(0.0, 2.0), kernel_epochs=(0.0, 0.5, 1.0, 2.0),
        train_attack_steps=2, phase2_epochs=1, phase2_dynamics=("centered", "linearized", "standard"),
        phase2_skip=("linearized-adv",), flip=True, per_class=2, test_per_class=1, eval_examples=24,
        primary_examples=32, eval_steps=5, strong_restarts=1, square_queries=20, primary_restarts=1,
        primary_square_queries=20, eigen_images=1, eigen_steps=5, kernel_machine_per_class=2,
        kernel_machine_epochs=(2.0,), batch_size=256),
    "quick": Preset(
        name="quick",
        description="make run: the primary endpoints of all four claims on digits at ε = 0.2 in "
                    "≤ 10 minutes on 2 cores, at 3 seeds (too few for most verdicts: a preview of "
                    "the digits preset): MLP 64-256-256-10, 10 phase-1 epochs (standard, PGD-10 "
                    "clean-then-adversarial, and their matched floors), centered phase 2 on clean "
                    "and PGD data (10 epochs) from spawns at epochs 0, 1 and 10; transfer attacks; "
                    "kernels on 100 training images; the primary checkpoints on all 360 test images "
                    "with the sanity report, the others on 180 (strong ensemble at 2 restarts, 500 "
                    "and 250 Square queries); kernel machines of two spawns on 200 training images.",
        seeds=3, seed_base=100, phase1_epochs=10, spawn_epochs=(0.0, 1.0, 10.0),
        kernel_epochs=(0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0), phase2_epochs=10,
        eval_examples=180, strong_restarts=2, square_queries=250, primary_restarts=2,
        primary_square_queries=500, eigen_steps=300, kernel_machine_epochs=(1.0, 10.0)),
    "digits": Preset(
        name="digits",
        description="The full study on digits at ε = 0.2: 10 seeds, MLP 64-256-256-10, 40 "
                    "phase-1 epochs at lr 0.05, × 0.1 from epoch 30 (long enough for the kernel to "
                    "reach its lazy phase: bench/phase1_convergence.py), standard, adversarial (PGD-10 "
                    "clean-then-adversarial), matched floors and flip (adversarial from epoch 20); "
                    "centered, linearized and standard phase 2 (20 epochs) on clean and PGD data from "
                    "8 spawns (0, 0.125, 0.5, 1, 2, 4, 10, 40); transfer attacks, output terms, kernels "
                    "at 17 epochs; evaluation on all 360 test images (primary checkpoints at 10 "
                    "restarts and 5000 Square queries with the sanity report, the others at 2 and "
                    "250); kernel machines of 4 spawns on 500 training images.",
        seeds=10, seed_base=200, phase1_epochs=40, phase1_lr_boundaries=(30.0,),
        spawn_epochs=(0.0, 0.125, 0.5, 1.0, 2.0, 4.0, 10.0, 40.0), kernel_epochs=_DIGITS_GRID,
        phase2_epochs=20, phase2_dynamics=("centered", "linearized", "standard"), flip=True,
        eval_examples=None, strong_restarts=2, square_queries=250, kernel_machine_per_class=50,
        kernel_machine_epochs=(0.0, 1.0, 4.0, 40.0)),
    "digits-resnet": Preset(
        name="digits-resnet",
        description="The claims on the paper's architecture family: ResNet-18 (width 8, BatchNorm "
                    "frozen in phase 2) on digits at ε = 0.2, 3 seeds, 20 phase-1 epochs, centered "
                    "phase 2 on clean and PGD data (10 epochs) from spawns 0, 1, 5 and 20, the "
                    "primary endpoints at full strength on all 360 test images.",
        model="resnet18", width=8, seeds=3, seed_base=300, phase1_epochs=20, phase1_lr=0.05,
        spawn_epochs=(0.0, 1.0, 5.0, 20.0), kernel_epochs=(0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0),
        phase2_epochs=10, flip=False, eval_examples=180, strong_restarts=2, square_queries=250,
        per_class=5, test_per_class=5, eigen_images=0, kernel_machine_per_class=0),
    "cifar10": Preset(
        name="cifar10",
        description="The paper's figures on a focused grid: CIFAR-10, ResNet-18, ε = 4/255, 101 "
                    "phase-1 epochs (lr 0.1, × 0.1 from epoch 100, PGD-20 clean-then-adversarial; "
                    "standard, adversarial, matched floors, flip at epoch 50), 3 seeds, spawns 0, "
                    "0.125, 0.5, 1, 2, 5, 10, 20, 50 and 100, centered, linearized and standard phase "
                    "2 for 100 epochs at lr 0.01 on clean and PGD data, transfer attacks, 500-image "
                    "kernels (50 per class) at 16 epochs, the primary endpoints at full strength "
                    "(PGD-100, 10 restarts, 5000 Square queries, the sanity report, the whole test "
                    "set), the other checkpoints on 1000 test images (2 restarts, 500 queries); "
                    "kernel machines (500 training images) of 6 spawns. For GPUs/TPUs "
                    "(--executor=ray).",
        dataset="cifar10", model="resnet18", width=None, eps=4 / 255, seeds=3, seed_base=400,
        phase1_epochs=101, phase1_lr=0.1, phase1_lr_boundaries=(100.0,), train_attack_steps=20,
        spawn_epochs=(0.0, 0.125, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0),
        kernel_epochs=(0.0, 0.125, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0,
                       100.0, 101.0),
        phase2_epochs=100, phase2_lr=0.01, phase2_dynamics=("centered", "linearized", "standard"),
        flip=True, per_class=50, test_per_class=10, eigen_images=3, kernel_machine_per_class=50,
        kernel_machine_epochs=(0.0, 0.5, 2.0, 10.0, 50.0, 100.0), eval_examples=1000,
        strong_restarts=2, square_queries=500, resources=_ACCELERATOR_JOBS),
    "cifar10-full": Preset(
        name="cifar10-full",
        description="The paper's protocol in full: as cifar10, but every spawn (each whole epoch 0…"
                    "100 and the fractions 0.125, 0.25, 0.375, 0.5, 0.75, 1.5, 2.5), kernels at "
                    "every spawn, kernel machines of 10 spawns.",
        dataset="cifar10", model="resnet18", width=None, eps=4 / 255, seeds=3, seed_base=410,
        phase1_epochs=101, phase1_lr=0.1, phase1_lr_boundaries=(100.0,), train_attack_steps=20,
        spawn_epochs=_CIFAR_GRID, kernel_epochs=_CIFAR_GRID + (101.0,),
        phase2_epochs=100, phase2_lr=0.01, phase2_dynamics=("centered", "linearized", "standard"),
        flip=True, per_class=50, test_per_class=10, eigen_images=3, kernel_machine_per_class=50,
        kernel_machine_epochs=(0.0, 0.125, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0),
        resources=_ACCELERATOR_JOBS),
}


