"""The reproduction study as a job graph: presets, and the plan of phase-1 runs, phase-2 runs from
their spawns, kernel walks (per run, per standard/adversarial pair and per seed-to-seed baseline pair),
eigen-images and evaluations that tests the paper's three claims.

Sweep directory layout (every path relative to it):
  phase1/<source>-s<seed>/                      tf-ntk-train runs; <source> = standard | adversarial
  phase2/<dyn>-<data>-from-<source>-s<seed>-e<spawn>/   phase-2 runs from phase1/<source>-s<seed>
  <run>/eval/epoch_<E>/evaluation.json          strong + protocol evaluation of a run's final checkpoint
  kernels/<run>/kernel_dynamics.csv             a phase-1 run's kernel metrics at every spawn checkpoint
  kernels/<a>_vs_<b>/comparison.csv             kernel distance between two runs at each epoch
  kernels/cache/                                the kernels themselves, computed once per checkpoint
  features/<run>/eigen_images.npz               eigen-images of a final phase-1 kernel
  kernel_machine/<run>/kernel_machine.json      the kernel machine (infinite-time centered predictor) of
                                                a phase-1 run's spawns: benign and robust accuracy
  logs/<job>.log, sweep.json, report.md, results.csv, figures/
"""

import dataclasses
import math
import os

from tf_ntk import data
from tf_ntk import sweep

SOURCES = ("standard", "adversarial")  # phase-1 training on clean / PGD data

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
      seeds: number of seeds (0 … seeds − 1); every statistic is over seeds.
      batch_size: SGD batch size.
      phase1_epochs, phase1_lr, phase1_lr_boundaries: phase-1 schedule (lr × 0.1 at each boundary).
      train_attack_steps: PGD steps of adversarial training (step 2ε/steps, random start).
      adv_mode: "clean_then_adv" (the authors') or "madry".
      spawn_epochs: phase-1 epochs phase 2 starts from (fractions allowed).
      kernel_epochs: phase-1 epochs at which kernels are measured (checkpoints saved there too).
      phase2_epochs, phase2_lr: phase-2 schedule (constant lr).
      phase2_dynamics: subset of ("centered", "linearized").
      phase2_data: subset of ("clean", "adv").
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
    """

    name: str
    description: str
    dataset: str = "digits"
    model: str = "mlp"
    width: int | None = 256
    eps: float = 0.2
    seeds: int = 3
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
        unknown = set(self.phase2_dynamics) - {"centered", "linearized"}
        if unknown or not self.phase2_dynamics:
            raise ValueError(f"phase2_dynamics must be centered and/or linearized, got "
                             f"{','.join(self.phase2_dynamics)}")
        unknown = set(self.phase2_data) - {"clean", "adv"}
        if unknown or not self.phase2_data:
            raise ValueError(f"phase2_data must be clean and/or adv, got {','.join(self.phase2_data)}")
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

    @classmethod
    def from_dict(cls, d):
        """The inverse of `to_dict` (after a JSON round trip: lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def save_epochs(self):
        """Phase-1 checkpoint epochs: the spawn, kernel and kernel-machine grids, sorted."""
        return tuple(sorted({float(e) for e in self.spawn_epochs + self.kernel_epochs
                             + (self.kernel_machine_epochs or ())}))

    def machine_epochs(self):
        """The spawn epochs whose kernel machine is evaluated (none without kernel-machine jobs)."""
        if not self.kernel_machine_per_class:
            return ()
        return tuple(float(e) for e in (self.kernel_machine_epochs or self.spawn_epochs))


_DIGITS_GRID = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0)

PRESETS = {
    "smoke": Preset(
        name="smoke",
        description="The test suite's plumbing check: 2 seeds, 2 + 1 epochs, a width-16 MLP, 24 "
                    "test images. Its numbers mean nothing.",
        width=16, seeds=2, phase1_epochs=2, spawn_epochs=(0.5, 2.0), kernel_epochs=(0.0, 0.5, 1.0, 2.0),
        train_attack_steps=2, phase2_epochs=1, per_class=2, test_per_class=1, eval_examples=24,
        eval_steps=5, strong_restarts=1, square_queries=20, eigen_images=1, eigen_steps=5,
        kernel_machine_per_class=2, batch_size=256),
    "quick": Preset(
        name="quick",
        description="make run: all three claims on digits at ε = 0.2 in ≤ 4 minutes on 2 cores: "
                    "3 seeds, MLP 64-256-256-10, 10 phase-1 epochs (PGD-10 clean-then-adversarial), "
                    "centered phase 2 (10 epochs) on clean and PGD data from spawns at epochs 0.25, "
                    "2 and 10; kernels on 100 training images; evaluation on 180 test images with "
                    "the strong ensemble at 2 restarts and 250 Square queries; kernel machines of the "
                    "spawns on 200 training images.",
        seeds=3, phase1_epochs=10, spawn_epochs=(0.25, 2.0, 10.0),
        kernel_epochs=(0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0), phase2_epochs=10,
        eval_examples=180, strong_restarts=2, square_queries=250, eigen_steps=300),
    "digits": Preset(
        name="digits",
        description="The full study on digits at ε = 0.2 (≤ 25 minutes on 2 cores): 5 seeds, MLP "
                    "64-256-256-10, 20 phase-1 epochs, centered and linearized phase 2 (20 epochs) "
                    "on clean and PGD data from 5 spawns (0.125, 1, 2, 5, 20), kernels at 11 "
                    "epochs, evaluation on 150 test images with the strong ensemble at 2 restarts "
                    "and 250 Square queries; kernel machines of the spawns on 500 training images.",
        seeds=5, phase1_epochs=20, spawn_epochs=(0.125, 1.0, 2.0, 5.0, 20.0),
        kernel_epochs=_DIGITS_GRID, phase2_epochs=20, phase2_dynamics=("centered", "linearized"),
        eval_examples=150, strong_restarts=2, square_queries=250, kernel_machine_per_class=50),
    "cifar10": Preset(
        name="cifar10",
        description="The paper's protocol: CIFAR-10, ResNet-18, ε = 4/255, 101 phase-1 epochs (lr "
                    "0.1, PGD-20 clean-then-adversarial), every spawn (each whole epoch and the "
                    "fractional ones), centered phase 2 for 100 epochs at lr 0.01 on clean and PGD "
                    "data, 500-image kernels (50 per class), PGD-100 and the strong ensemble on the "
                    "whole test set; kernel machines (500 training images) of 10 spawns. For GPUs/TPUs.",
        dataset="cifar10", model="resnet18", width=None, eps=4 / 255, seeds=3, phase1_epochs=101,
        phase1_lr=0.1, phase1_lr_boundaries=(100.0,), train_attack_steps=20,
        spawn_epochs=tuple(sorted({*map(float, range(102)), 0.125, 0.25, 0.375, 0.5, 0.75, 1.5, 2.5})),
        kernel_epochs=tuple(sorted({*map(float, range(102)), 0.125, 0.25, 0.375, 0.5, 0.75, 1.5, 2.5})),
        phase2_epochs=100, phase2_lr=0.01, per_class=50, test_per_class=10, eigen_images=3,
        kernel_machine_per_class=50,
        kernel_machine_epochs=(0.0, 0.125, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 101.0)),
}


def epoch_name(epoch):
    """"0.25", "2": how an epoch appears in run names."""
    return f"{float(epoch):g}"


def phase1_name(source, seed):
    return f"{source}-s{seed}"


def phase2_name(dynamics, data_mode, source, seed, spawn):
    return f"{dynamics}-{data_mode}-from-{source}-s{seed}-e{epoch_name(spawn)}"


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


def _eval_cost(preset, dynamics):
    """Benign + protocol PGD + the strong ensemble (tf_ntk.robustness.strong: PGD-CE and PGD-margin,
    cosine PGD with CE, margin and DLR, each × restarts; 3 targeted runs; APGD-CE and APGD-DLR × 5;
    Square), its first member on every image and the rest on `SURVIVING_SHARE` of them."""
    n = preset.eval_examples or data.info(preset.dataset).num_examples["test"]
    batches = n / preset.batch_size
    step = DYNAMICS_STEP_COST[dynamics]
    first = preset.strong_restarts
    later = 4 * preset.strong_restarts + 3 + 2 * 5
    attack_steps = preset.eval_steps * (1 + first + SURVIVING_SHARE * later)
    return batches * step * (FORWARD_COST + attack_steps * ATTACK_STEP_COST
                             + SURVIVING_SHARE * preset.square_queries * FORWARD_COST)


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


def plan(preset, sweep_dir, report_args=None):
    """The study's `sweep.Job`s for ``preset`` under ``sweep_dir``, in dependency order; the last
    job writes the report (tf-ntk-reproduce with ``report_args``, default: the sweep directory and
    --report_only)."""
    path = lambda *parts: os.path.join(sweep_dir, *parts)  # noqa: E731
    common = [f"--dataset={preset.dataset}", f"--model={preset.model}", f"--eps={preset.eps!r}",
              f"--batch_size={preset.batch_size}"]
    if preset.width is not None:
        common.append(f"--width={preset.width}")
    if preset.jit_compile:
        common.append("--jit_compile")
    steps = _steps_per_epoch(preset)
    jobs = []
    final = float(preset.phase1_epochs)
    evals = []

    def evaluate(run_name, run_dir, epoch, dynamics, deps):
        checkpoint = os.path.join(run_dir, "spawn", f"epoch_{epoch_name(epoch)}")
        args = [f"--checkpoint={checkpoint}", f"--eps={preset.eps!r}", "--attack=protocol,strong",
                f"--attack_steps={preset.eval_steps}", f"--strong_restarts={preset.strong_restarts}",
                f"--square_queries={preset.square_queries}", f"--batch_size={preset.batch_size}"]
        if preset.eval_examples:
            args.append(f"--max_examples={preset.eval_examples}")
        output = os.path.join(run_dir, "eval", f"epoch_{epoch_name(epoch)}", "evaluation.json")
        job = sweep.Job(f"eval/{run_name}", "tf_ntk.cli.evaluate", tuple(args), output, tuple(deps),
                        cost=_eval_cost(preset, dynamics))
        jobs.append(job)
        evals.append(job.name)

    for source in SOURCES:
        for seed in range(preset.seeds):
            name = phase1_name(source, seed)
            run = path("phase1", name)
            adversarial = source == "adversarial"
            args = [f"--workdir={run}", *common, f"--seed={seed}", f"--epochs={preset.phase1_epochs}",
                    f"--lr={preset.phase1_lr!r}",
                    f"--lr_boundaries={_epochs_arg(preset.phase1_lr_boundaries)}",
                    f"--save_epochs={_epochs_arg(preset.save_epochs())}", "--eval_every=0",
                    f"--data_mode={'adv' if adversarial else 'clean'}"]
            if adversarial:
                args += [f"--adv_mode={preset.adv_mode}", f"--attack_steps={preset.train_attack_steps}"]
            cost = preset.phase1_epochs * steps * _train_step_cost(preset, "standard", adversarial)
            jobs.append(sweep.Job(f"phase1/{name}", "tf_ntk.cli.train", tuple(args),
                                  os.path.join(run, "results.json"), cost=cost))
            evaluate(name, run, final, "standard", [f"phase1/{name}"])

    for source in SOURCES:
        for seed in range(preset.seeds):
            parent = phase1_name(source, seed)
            for spawn in preset.spawn_epochs:
                for dynamics in preset.phase2_dynamics:
                    for data_mode in preset.phase2_data:
                        name = phase2_name(dynamics, data_mode, source, seed, spawn)
                        run = path("phase2", name)
                        adversarial = data_mode == "adv"
                        args = [f"--workdir={run}", *common, f"--seed={seed}",
                                f"--spawn={path('phase1', parent, 'spawn', 'epoch_' + epoch_name(spawn))}",
                                f"--dynamics={dynamics}", f"--data_mode={data_mode}",
                                f"--epochs={preset.phase2_epochs}", f"--lr={preset.phase2_lr!r}",
                                f"--save_epochs={preset.phase2_epochs}", "--eval_every=0"]
                        if adversarial:
                            args += [f"--adv_mode={preset.adv_mode}",
                                     f"--attack_steps={preset.train_attack_steps}"]
                        cost = preset.phase2_epochs * steps * _train_step_cost(preset, dynamics,
                                                                               adversarial)
                        jobs.append(sweep.Job(f"phase2/{name}", "tf_ntk.cli.train", tuple(args),
                                              os.path.join(run, "results.json"),
                                              (f"phase1/{parent}",), cost=cost))
                        evaluate(name, run, preset.phase2_epochs, dynamics, [f"phase2/{name}"])

    kernel_args = [f"--per_class={preset.per_class}", f"--test_per_class={preset.test_per_class}",
                   f"--kernel_cache={path('kernels', 'cache')}", f"--dataset={preset.dataset}"]
    kernel_cost = _kernel_cost(preset, preset.save_epochs())
    for source in SOURCES:
        for seed in range(preset.seeds):
            name = phase1_name(source, seed)
            out = path("kernels", name)
            jobs.append(sweep.Job(
                f"kernels/{name}", "tf_ntk.cli.kernel_dynamics",
                (f"--run={path('phase1', name)}", f"--workdir={out}", *kernel_args),
                os.path.join(out, "kernel_dynamics.csv"), (f"phase1/{name}",), cost=kernel_cost))
    for a, b in comparison_pairs(preset.seeds):
        out = path("kernels", f"{a}_vs_{b}")
        jobs.append(sweep.Job(
            f"kernels/{a}_vs_{b}", "tf_ntk.cli.kernel_dynamics",
            (f"--run={path('phase1', a)}", f"--compare_run={path('phase1', b)}", f"--workdir={out}",
             "--compare_only", *kernel_args),
            os.path.join(out, "comparison.csv"), (f"kernels/{a}", f"kernels/{b}"), cost=0.0))
    if preset.eigen_images:
        for source in SOURCES:
            name = phase1_name(source, 0)
            out = path("features", name)
            checkpoint = path("phase1", name, "spawn", f"epoch_{epoch_name(final)}")
            jobs.append(sweep.Job(
                f"features/{name}", "tf_ntk.cli.visualize_features",
                (f"--checkpoint={checkpoint}", f"--workdir={out}", f"--per_class={preset.per_class}",
                 f"--num_eigen={preset.eigen_images}", f"--feature_steps={preset.eigen_steps}",
                 f"--dataset={preset.dataset}"),
                os.path.join(out, "eigen_images.npz"), (f"phase1/{name}",),
                cost=_kernel_cost(preset, [final]) + 2 * preset.eigen_images * preset.eigen_steps
                / preset.batch_size * preset.per_class))
    machine_epochs = preset.machine_epochs()
    for source in SOURCES if machine_epochs else ():
        for seed in range(preset.seeds):
            name = phase1_name(source, seed)
            out = path("kernel_machine", name)
            args = [f"--phase1_run={path('phase1', name)}", f"--workdir={out}",
                    f"--at_epochs={_epochs_arg(machine_epochs)}",
                    f"--train_per_class={preset.kernel_machine_per_class}", f"--dataset={preset.dataset}",
                    f"--eps={preset.eps!r}", f"--attack_steps={preset.eval_steps}",
                    f"--strong_restarts={preset.strong_restarts}",
                    f"--square_queries={preset.square_queries}", f"--batch_size={preset.batch_size}"]
            if preset.eval_examples:
                args.append(f"--test_examples={preset.eval_examples}")
            jobs.append(sweep.Job(f"kernel_machine/{name}", "tf_ntk.cli.kernel_machine", tuple(args),
                                  os.path.join(out, "kernel_machine.json"), (f"phase1/{name}",),
                                  cost=_kernel_machine_cost(preset)))
    report_args = (f"--workdir={sweep_dir}", "--report_only") if report_args is None else report_args
    jobs.append(sweep.Job("report", "tf_ntk.cli.reproduce", tuple(report_args), None,
                          tuple(j.name for j in jobs)))
    return sweep.order(jobs)


def cost_table(jobs):
    """[(kind, number of jobs, cost in train-step equivalents)] by the first part of job names."""
    groups = {}
    for job in jobs:
        kind = job.name.split("/", 1)[0]
        count, cost = groups.get(kind, (0, 0.0))
        groups[kind] = (count + 1, cost + job.cost)
    return [(kind, count, cost) for kind, (count, cost) in groups.items()]


def comparison_pairs(seeds):
    """(run a, run b) name pairs whose kernels are compared: standard vs adversarial for every seed
    (the claim), and the seed-to-seed baselines of each training, seed i vs seed i+1 (cyclically,
    each unordered pair once)."""
    pairs = [(phase1_name("standard", s), phase1_name("adversarial", s)) for s in range(seeds)]
    for source in SOURCES:
        seen = set()
        for s in range(seeds):
            t = (s + 1) % seeds
            if s != t and frozenset((s, t)) not in seen:
                seen.add(frozenset((s, t)))
                pairs.append((phase1_name(source, min(s, t)), phase1_name(source, max(s, t))))
    return pairs


def baseline_partner(seed, seeds):
    """The seed whose run is seed ``seed``'s seed-to-seed baseline (None with one seed)."""
    return None if seeds < 2 else (seed + 1) % seeds
