"""The reproduction study as a job graph: presets, and the plan of phase-1 runs, phase-2 runs from
their spawns, kernel walks, matched noise floors, transfer attacks, eigen-images, kernel machines and
evaluations that tests the paper's three claims (decided by `tf_ntk.report`'s primary endpoints).

Sweep directory layout (every path relative to it):
  phase1/<source>-s<seed>/                      tf-ntk-train runs; <source> = standard | adversarial |
                                                flip (clean for the first half, then adversarial)
  phase1/<source>-s<seed>-rep/                  the matched noise floor: the same training from the
                                                same initialisation, another data order and attack
                                                starts (--data_seed)
  phase2/<dyn>-<data>-from-<source>-s<seed>-e<spawn>/   phase-2 runs from phase1/<source>-s<seed>
                                                (spawn epoch 0, the initialisation: centered, from
                                                standard only)
  <run>/eval/epoch_<E>/evaluation.json          strong + protocol evaluation of a run's final checkpoint
  transfer/<source>-s<seed>-e<spawn>/           PGD examples of a spawn (adversarial.npz), evaluated on
                                                its centered children and on its sibling's
  kernels/<run>/kernel_dynamics.csv             a phase-1 run's kernel metrics at every spawn checkpoint
  kernels/<a>_vs_<b>/comparison.csv             kernel distance between two runs at each epoch
  kernels/cache/                                the kernels themselves, computed once per checkpoint
  features/<run>/eigen_images.npz               eigen-images of a final phase-1 kernel
  kernel_machine/<run>/kernel_machine.json      the kernel machine (infinite-time centered predictor) of
                                                a phase-1 run's spawns: benign and robust accuracy
  logs/<job>.log, sweep.json, report.md, results.csv, figures/
"""

import dataclasses
import json
import math
import os

from tf_ntk import data
from tf_ntk import sweep

SOURCES = ("standard", "adversarial")  # the compared phase-1 trainings: clean / PGD data
FLIP = "flip"  # phase-1 training on clean data for the first half, on PGD data after
REPLICA = "rep"  # suffix of a matched-floor run: same initialisation, another data seed
REPLICA_DATA_SEED = 10_000  # a replica's data seed: its seed + this (outside every preset's seeds)
PHASE2_DYNAMICS = ("centered", "linearized", "standard")

# Cost model, in train-step equivalents (one SGD step of the standard network on one batch), from
# bench/results/steps.txt: a linearized or centered step costs ~1.3 standard steps, one PGD step
# ~0.65 (a forward and backward pass to the input, no weight update), a forward pass ~1/3.
DYNAMICS_STEP_COST = {"standard": 1.0, "linearized": 1.3, "centered": 1.3}
ATTACK_STEP_COST = 0.65
FORWARD_COST = 1 / 3


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
      eigen_images: eigenvectors visualised per final phase-1 kernel (seed 0; 0: none).
      eigen_steps: signed-gradient steps per eigen-image.
      kernel_machine_per_class: training images per class of the kernel machine (tf-ntk-kernel-machine,
        class-balanced; 0: no kernel-machine jobs).
      kernel_machine_epochs: spawn epochs whose kernel machine is evaluated (None: ``spawn_epochs``).
      jit_compile: compile train and attack steps with XLA (TPUs).
      resources: Ray task options per job family for --executor=ray (`job_resources`); they shape
        how the sweep runs, not its numbers (`RUN_ONLY`).
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

    # Settings that shape how the sweep runs, not its numbers: a sweep directory may be resumed
    # with other values.
    RUN_ONLY = ("resources",)

    def __post_init__(self):
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
        if self.adv_mode not in ("clean_then_adv", "madry"):
            raise ValueError(f"adv_mode must be clean_then_adv or madry, got {self.adv_mode}")

    def replace(self, **changes):
        """A copy with ``changes``; a shorter phase 1 (``phase1_epochs``) without new grids keeps
        the grids' epochs below it and ends both at its last epoch (the final kernel and spawn)."""
        last = changes.get("phase1_epochs")
        if last is not None and last != self.phase1_epochs:
            for grid in ("kernel_epochs", "spawn_epochs", "kernel_machine_epochs"):
                if grid not in changes and getattr(self, grid) is not None:
                    changes[grid] = tuple(e for e in getattr(self, grid) if e < last) + (float(last),)
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    def numbers_dict(self):
        """`to_dict` without the `RUN_ONLY` settings: what a sweep's numbers depend on."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUN_ONLY}

    def job_resources(self):
        """{job family or "*": Ray task options} (num_cpus, num_gpus, memory in bytes, resources:
        e.g. {"TPU": 4}); default one CPU per job."""
        return self.resources or {"*": {"num_cpus": 1}}

    @classmethod
    def from_dict(cls, d):
        """The inverse of `to_dict` (after a JSON round trip: lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def seed_list(self):
        """The seeds, in order."""
        return tuple(range(self.seed_base, self.seed_base + self.seeds))

    def phase2_conditions(self):
        """[(dynamics, data)] of phase 2 (standard dynamics on clean data only)."""
        return [(d, m) for d in self.phase2_dynamics for m in self.phase2_data
                if (d != "standard" or m == "clean") and f"{d}-{m}" not in self.phase2_skip]

    def flip_epoch(self):
        """The flip source's first adversarial epoch (None without it)."""
        return self.phase1_epochs // 2 if self.flip else None

    def last_spawn(self):
        return float(max(self.spawn_epochs))

    def early_epoch(self):
        """The kernel epoch nearest 10% of phase 1 (C1b's "rapidly")."""
        target = self.phase1_epochs / 10
        return min((e for e in self.kernel_epochs if e > 0), key=lambda e: (abs(e - target), e))

    def optimizer_steps(self, epoch, source="adversarial"):
        """SGD updates a phase-1 run of ``source`` has taken by ``epoch`` (clean-then-adversarial
        training takes two per batch)."""
        steps = epoch * _steps_per_epoch(self)
        double = self.adv_mode == "clean_then_adv"
        if source == "adversarial" and double:
            return 2 * steps
        if source == FLIP and double:
            flip = self.flip_epoch()
            return steps + max(0.0, epoch - flip) * _steps_per_epoch(self)
        return steps

    def save_epochs(self):
        """Phase-1 checkpoint epochs: the spawn, kernel and kernel-machine grids, sorted."""
        return tuple(sorted({float(e) for e in self.spawn_epochs + self.kernel_epochs
                             + (self.kernel_machine_epochs or ())}))

    def machine_epochs(self):
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


def epoch_name(epoch):
    """"0.25", "2": how an epoch appears in run names."""
    return f"{float(epoch):g}"


def phase1_name(source, seed):
    return f"{source}-s{seed}"


def replica_name(source, seed):
    """The matched-floor run of ``phase1_name(source, seed)``."""
    return f"{source}-s{seed}-{REPLICA}"


def phase2_name(dynamics, data_mode, source, seed, spawn):
    return f"{dynamics}-{data_mode}-from-{source}-s{seed}-e{epoch_name(spawn)}"


def child_name(dynamics, data_mode, source, seed, spawn):
    """The phase-2 run of ``source``'s spawn (at epoch 0, the initialisation: the standard one's)."""
    return phase2_name(dynamics, data_mode, "standard" if spawn == 0 else source, seed, spawn)


def transfer_name(source, seed, spawn):
    return f"{source}-s{seed}-e{epoch_name(spawn)}"


TRANSFER_SET = "adversarial.npz"  # in transfer/<name>/: the spawn's protocol PGD examples


def _other(source):
    return SOURCES[1 - SOURCES.index(source)]


def phase1_sources(preset):
    """The phase-1 trainings of ``preset``: standard, adversarial (and flip)."""
    return SOURCES + ((FLIP,) if preset.flip else ())


def phase1_runs(preset):
    """Every phase-1 run name: each source and seed, and the matched-floor replicas."""
    names = [phase1_name(s, seed) for s in phase1_sources(preset) for seed in preset.seed_list()]
    if preset.matched_floor:
        names += [replica_name(s, seed) for s in SOURCES for seed in preset.seed_list()]
    return names


def evaluated_runs(preset):
    """[(run, phase, source, seed, dynamics, data, spawn epoch)] of every evaluated run, in plan
    order."""
    rows = []
    for source in phase1_sources(preset):
        for s in preset.seed_list():
            data_mode = {"standard": "clean", "adversarial": "adv", FLIP: "flip"}[source]
            rows.append((phase1_name(source, s), "1", source, s, "standard", data_mode, None))
    flip = preset.flip_epoch()
    for source in phase1_sources(preset):
        for s in preset.seed_list():
            for spawn in preset.spawn_epochs:
                if (spawn == 0 and source != "standard") or (source == FLIP and spawn < flip):
                    continue
                for dynamics, data_mode in preset.phase2_conditions():
                    if source == FLIP and (dynamics, data_mode) != ("centered", "clean"):
                        continue
                    if spawn == 0 and dynamics != "centered":
                        continue
                    rows.append((phase2_name(dynamics, data_mode, source, s, spawn), "2",
                                 source, s, dynamics, data_mode, float(spawn)))
    return rows


def _epochs_arg(epochs):
    return ",".join(epoch_name(e) for e in epochs)


def _steps_per_epoch(preset):
    return math.ceil(data.info(preset.dataset).num_examples["train"] / preset.batch_size)


def _train_step_cost(preset, dynamics, adversarial):
    cost = DYNAMICS_STEP_COST[dynamics]
    if not adversarial:
        return cost
    attack = preset.train_attack_steps * ATTACK_STEP_COST * cost
    return (cost if preset.adv_mode == "clean_then_adv" else 0.0) + attack + cost


# Share of the images still robust when the strong ensemble's later members run (each member attacks
# only what the earlier ones left standing): about half for adversarially trained models, ~0 for
# standard ones.
SURVIVING_SHARE = 0.5


def eval_examples(preset, primary=False):
    """Test examples an evaluation reads (None: the whole test set)."""
    return preset.primary_examples if primary else preset.eval_examples


def _eval_cost(preset, dynamics, examples=None, restarts=None, queries=None):
    """Benign + protocol PGD + the strong ensemble (tf_ntk.robustness.strong: PGD-CE and PGD-margin,
    cosine PGD with CE, margin and DLR, each × restarts; 3 targeted runs; APGD-CE and APGD-DLR ×
    restarts; Square), its first member on every image and the rest on `SURVIVING_SHARE` of them."""
    n = examples or preset.eval_examples or data.info(preset.dataset).num_examples["test"]
    restarts = restarts or preset.strong_restarts
    queries = preset.square_queries if queries is None else queries
    batches = n / preset.batch_size
    step = DYNAMICS_STEP_COST[dynamics]
    later = 4 * restarts + 3 + 2 * restarts
    attack_steps = preset.eval_steps * (1 + restarts + SURVIVING_SHARE * later)
    return batches * step * (FORWARD_COST + attack_steps * ATTACK_STEP_COST
                             + SURVIVING_SHARE * queries * FORWARD_COST)


def _kernel_cost(preset, epochs):
    """Per-example gradients of every logit on the probe sets, ~ one step per batch of gradients."""
    num_classes = data.info(preset.dataset).num_classes
    probe = num_classes * (preset.per_class + preset.test_per_class)
    return len(epochs) * 2 * probe * num_classes / preset.batch_size


def _kernel_machine_cost(preset):
    """Per spawn: the kernel on the training subset (as `_kernel_cost`), the JVP pass of Δθ, and a
    centered model's evaluation."""
    num_classes = data.info(preset.dataset).num_classes
    n = num_classes * preset.kernel_machine_per_class
    kernel = 2 * n * num_classes / preset.batch_size
    return len(preset.machine_epochs()) * (kernel + _eval_cost(preset, "centered"))


class _Planner:
    """Builds `plan`'s jobs family by family (each method adds one family's jobs)."""

    def __init__(self, preset, sweep_dir):
        self.preset = preset
        self.sweep_dir = sweep_dir
        self.jobs = []
        self.common = [f"--dataset={preset.dataset}", f"--model={preset.model}",
                       f"--eps={preset.eps!r}", f"--batch_size={preset.batch_size}"]
        if preset.width is not None:
            self.common.append(f"--width={preset.width}")
        if preset.jit_compile:
            self.common.append("--jit_compile")
        self.steps = _steps_per_epoch(preset)

    def path(self, *parts):
        return os.path.join(self.sweep_dir, *parts)

    def add(self, name, module, args, output, deps=(), cost=0.0):
        self.jobs.append(sweep.Job(name, module, tuple(args), output, tuple(deps), cost=cost))
        return name

    def spawn(self, run, epoch):
        return self.path("phase1", run, "spawn", f"epoch_{epoch_name(epoch)}")

    def evaluate(self, run_name, run_dir, epoch, dynamics, deps, primary=False, extra=()):
        """An evaluation job of ``run_dir``'s checkpoint at ``epoch``: the protocol PGD and the strong
        ensemble; the primary endpoints' checkpoints at full strength with the sanity report."""
        p = self.preset
        checkpoint = os.path.join(run_dir, "spawn", f"epoch_{epoch_name(epoch)}")
        restarts = p.primary_restarts if primary else p.strong_restarts
        queries = p.primary_square_queries if primary else p.square_queries
        examples = eval_examples(p, primary)
        args = [f"--checkpoint={checkpoint}", f"--eps={p.eps!r}", "--attack=protocol,strong",
                f"--attack_steps={p.eval_steps}", f"--strong_restarts={restarts}",
                f"--square_queries={queries}", f"--batch_size={p.batch_size}", *extra]
        if examples:
            args.append(f"--max_examples={examples}")
        if primary:
            args.append("--sanity_checks")
        output = os.path.join(run_dir, "eval", f"epoch_{epoch_name(epoch)}", "evaluation.json")
        cost = _eval_cost(p, dynamics, examples, restarts, queries) * (2.5 if primary else 1.0)
        return self.add(f"eval/{run_name}", "tf_ntk.cli.evaluate", args, output, deps, cost)

    def phase1(self):
        p = self.preset
        final = float(p.phase1_epochs)
        primary = set(SOURCES)
        for source in phase1_sources(p):
            for seed in p.seed_list():
                adversarial = source != "standard"
                data_mode = {"standard": "clean", "adversarial": "adv", FLIP: "flip"}[source]
                runs = [(phase1_name(source, seed), None)]
                if p.matched_floor and source in SOURCES:
                    runs.append((replica_name(source, seed), seed + REPLICA_DATA_SEED))
                for name, data_seed in runs:
                    run = self.path("phase1", name)
                    args = [f"--workdir={run}", *self.common, f"--seed={seed}",
                            f"--epochs={p.phase1_epochs}", f"--lr={p.phase1_lr!r}",
                            f"--lr_boundaries={_epochs_arg(p.phase1_lr_boundaries)}",
                            f"--save_epochs={_epochs_arg(p.save_epochs())}", "--eval_every=0",
                            f"--eval_attack_steps={min(20, p.eval_steps)}", f"--data_mode={data_mode}"]
                    if data_seed is not None:
                        args.append(f"--data_seed={data_seed}")
                    if adversarial:
                        args += [f"--adv_mode={p.adv_mode}", f"--attack_steps={p.train_attack_steps}"]
                    if source == FLIP:
                        args.append(f"--flip_epoch={p.flip_epoch()}")
                    cost = p.phase1_epochs * self.steps * _train_step_cost(p, "standard", adversarial)
                    if source == FLIP:
                        cost = cost / 2 + p.phase1_epochs / 2 * self.steps
                    self.add(f"phase1/{name}", "tf_ntk.cli.train", args,
                             os.path.join(run, "results.json"), cost=cost)
                    if data_seed is None:  # the replicas only give kernels
                        self.evaluate(name, run, final, "standard", [f"phase1/{name}"],
                                      primary=source in primary)

    def transfer(self):
        """Per spawn > 0 of each source and seed: the protocol PGD's examples of that spawn (standard
        dynamics), saved for its centered children and its sibling's."""
        p = self.preset
        if not p.transfer:
            return
        for source in SOURCES:
            for seed in p.seed_list():
                for spawn in p.spawn_epochs:
                    if spawn == 0:
                        continue
                    name = transfer_name(source, seed, spawn)
                    out = self.path("transfer", name)
                    args = [f"--checkpoint={self.spawn(phase1_name(source, seed), spawn)}",
                            f"--workdir={out}", f"--eps={p.eps!r}", "--attack=protocol",
                            f"--attack_steps={p.eval_steps}", f"--batch_size={p.batch_size}",
                            f"--save_adversarial={os.path.join(out, TRANSFER_SET)}",
                            "--overwrite"]  # runs only while evaluation.json is missing: a set
                    # left by a job killed before it is replaced
                    examples = eval_examples(p, True)
                    if examples:
                        args.append(f"--max_examples={examples}")
                    n = examples or data.info(p.dataset).num_examples["test"]
                    cost = n / p.batch_size * p.eval_steps * ATTACK_STEP_COST
                    self.add(f"transfer/{name}", "tf_ntk.cli.evaluate", args,
                             os.path.join(out, "evaluation.json"),
                             (f"phase1/{phase1_name(source, seed)}",), cost)

    def phase2(self):
        p = self.preset
        last = p.last_spawn()
        flip = p.flip_epoch()
        for source in phase1_sources(p):
            for seed in p.seed_list():
                parent = phase1_name(source, seed)
                for spawn in p.spawn_epochs:
                    if spawn == 0 and source != "standard":
                        continue  # the initialisation: the same for every source
                    if source == FLIP and spawn < flip:
                        continue  # before the flip, the standard run's spawn
                    for dynamics, data_mode in p.phase2_conditions():
                        if source == FLIP and (dynamics, data_mode) != ("centered", "clean"):
                            continue
                        if spawn == 0 and dynamics != "centered":
                            continue  # the control is the claims' dynamics
                        name = phase2_name(dynamics, data_mode, source, seed, spawn)
                        run = self.path("phase2", name)
                        adversarial = data_mode == "adv"
                        args = [f"--workdir={run}", *self.common, f"--seed={seed}",
                                f"--spawn={self.spawn(parent, spawn)}",
                                f"--dynamics={dynamics}", f"--data_mode={data_mode}",
                                f"--epochs={p.phase2_epochs}", f"--lr={p.phase2_lr!r}",
                                f"--save_epochs={p.phase2_epochs}", "--eval_every=0",
                                f"--eval_attack_steps={min(20, p.eval_steps)}"]
                        if adversarial:
                            args += [f"--adv_mode={p.adv_mode}",
                                     f"--attack_steps={p.train_attack_steps}"]
                        cost = p.phase2_epochs * self.steps * _train_step_cost(p, dynamics, adversarial)
                        self.add(f"phase2/{name}", "tf_ntk.cli.train", args,
                                 os.path.join(run, "results.json"), (f"phase1/{parent}",), cost)
                        extra, deps = [], [f"phase2/{name}"]
                        if dynamics == "linearized":
                            extra.append("--output_terms")
                        if (p.transfer and dynamics == "centered" and spawn > 0
                                and source in SOURCES):
                            sets = [transfer_name(s, seed, spawn)
                                    for s in (source, _other(source))]
                            extra.append("--transfer_from=" + ",".join(
                                self.path("transfer", s, TRANSFER_SET) for s in sets))
                            deps += [f"transfer/{s}" for s in sets]
                        primary = (dynamics == "centered" and spawn == last and source in SOURCES)
                        self.evaluate(name, run, p.phase2_epochs, dynamics, deps, primary, extra)

    def kernels(self):
        p = self.preset
        kernel_args = [f"--per_class={p.per_class}", f"--test_per_class={p.test_per_class}",
                       f"--kernel_cache={self.path('kernels', 'cache')}", f"--dataset={p.dataset}"]
        cost = _kernel_cost(p, p.save_epochs())
        for name in phase1_runs(p):
            out = self.path("kernels", name)
            self.add(f"kernels/{name}", "tf_ntk.cli.kernel_dynamics",
                     (f"--run={self.path('phase1', name)}", f"--workdir={out}", *kernel_args),
                     os.path.join(out, "kernel_dynamics.csv"), (f"phase1/{name}",), cost)
        for a, b in comparison_pairs(p):
            out = self.path("kernels", f"{a}_vs_{b}")
            self.add(f"kernels/{a}_vs_{b}", "tf_ntk.cli.kernel_dynamics",
                     (f"--run={self.path('phase1', a)}", f"--compare_run={self.path('phase1', b)}",
                      f"--workdir={out}", "--compare_only", *kernel_args),
                     os.path.join(out, "comparison.csv"), (f"kernels/{a}", f"kernels/{b}"))

    def features(self):
        p = self.preset
        if not p.eigen_images:
            return
        final = float(p.phase1_epochs)
        for source in SOURCES:
            name = phase1_name(source, p.seed_list()[0])
            out = self.path("features", name)
            self.add(f"features/{name}", "tf_ntk.cli.visualize_features",
                     (f"--checkpoint={self.spawn(name, final)}", f"--workdir={out}",
                      f"--per_class={p.per_class}", f"--num_eigen={p.eigen_images}",
                      f"--feature_steps={p.eigen_steps}", f"--dataset={p.dataset}"),
                     os.path.join(out, "eigen_images.npz"), (f"phase1/{name}",),
                     _kernel_cost(p, [final]) + 2 * p.eigen_images * p.eigen_steps
                     / p.batch_size * p.per_class)

    def kernel_machines(self):
        p = self.preset
        machine_epochs = p.machine_epochs()
        for source in SOURCES if machine_epochs else ():
            for seed in p.seed_list():
                name = phase1_name(source, seed)
                out = self.path("kernel_machine", name)
                args = [f"--phase1_run={self.path('phase1', name)}", f"--workdir={out}",
                        f"--at_epochs={_epochs_arg(machine_epochs)}",
                        f"--train_per_class={p.kernel_machine_per_class}", f"--dataset={p.dataset}",
                        f"--eps={p.eps!r}", f"--attack_steps={p.eval_steps}",
                        f"--strong_restarts={p.strong_restarts}",
                        f"--square_queries={p.square_queries}", f"--batch_size={p.batch_size}"]
                if p.eval_examples:
                    args.append(f"--test_examples={p.eval_examples}")
                self.add(f"kernel_machine/{name}", "tf_ntk.cli.kernel_machine", args,
                         os.path.join(out, "kernel_machine.json"), (f"phase1/{name}",),
                         _kernel_machine_cost(p))


def plan(preset, sweep_dir, report_args=None):
    """The study's `sweep.Job`s for ``preset`` under ``sweep_dir``, in dependency order; the last
    job writes the report (tf-ntk-reproduce with ``report_args``, default: the sweep directory and
    --report_only)."""
    planner = _Planner(preset, sweep_dir)
    for family in (planner.phase1, planner.transfer, planner.phase2, planner.kernels,
                   planner.features, planner.kernel_machines):
        family()
    report_args = (f"--workdir={sweep_dir}", "--report_only") if report_args is None else report_args
    planner.add("report", "tf_ntk.cli.reproduce", report_args, None,
                [j.name for j in planner.jobs])
    return sweep.order(planner.jobs)


# Seconds of one train-step equivalent per device kind, for presets whose standard step is the one
# bench/accelerator.py measures (ResNet-18 width 64, batch 128, 32×32×3 images): measured where
# bench/results/accelerator_<kind>.json exists, else these estimates, labelled as such.
STEP_SECONDS_ESTIMATE = {
    "gpu": (0.03, "estimated: one A100-class GPU (ResNet-18 training at ~4,000 CIFAR images/s)"),
    "tpu": (0.03, "estimated: one TPU v4 chip (about an A100's throughput under XLA)"),
    "cpu": (6.0, "estimated: 2 CPU cores"),
}
BENCH_RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                             "results")


def step_seconds(preset, results_dir=BENCH_RESULTS):
    """{device kind: (seconds per train-step equivalent, where the number comes from)}, or None when
    ``preset``'s standard step is not the benchmarked ResNet-18 step (its cost has no device table)."""
    if (preset.model, preset.width, preset.batch_size, data.info(preset.dataset).image_shape) != (
            "resnet18", None, 128, (32, 32, 3)):
        return None
    out = {}
    for kind, estimate in STEP_SECONDS_ESTIMATE.items():
        path = os.path.join(results_dir, f"accelerator_{kind}.json")
        out[kind] = estimate
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            key = "standard_xla" if preset.jit_compile else "standard_tf"
            seconds = record.get("steps_seconds", {}).get(key)
            if seconds and not record.get("smoke"):
                out[kind] = (seconds, f"measured on {record.get('device_model', kind)} "
                                      f"(bench/results/accelerator_{kind}.json, {key})")
    return out


def cost_table(jobs):
    """[(kind, number of jobs, cost in train-step equivalents)] by the first part of job names."""
    groups = {}
    for job in jobs:
        kind = job.name.split("/", 1)[0]
        count, cost = groups.get(kind, (0, 0.0))
        groups[kind] = (count + 1, cost + job.cost)
    return [(kind, count, cost) for kind, (count, cost) in groups.items()]


def comparison_pairs(preset):
    """(run a, run b) name pairs whose kernels are compared: standard vs adversarial for every seed
    (C1); each run against its matched-floor replica (the same initialisation, another data seed:
    independent pairs, no run in two of them); the flip run against the adversarial one."""
    pairs = []
    for seed in preset.seed_list():
        pairs.append((phase1_name("standard", seed), phase1_name("adversarial", seed)))
        if preset.matched_floor:
            pairs += [(phase1_name(s, seed), replica_name(s, seed)) for s in SOURCES]
        if preset.flip:
            pairs.append((phase1_name(FLIP, seed), phase1_name("adversarial", seed)))
    return pairs
