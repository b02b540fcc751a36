"""The reproduction study as a job graph: presets, and the plan of phase-1 runs, phase-2 runs from
their spawns, kernel walks, matched noise floors, transfer attacks, eigen-images, kernel machines and
evaluations that tests the paper's claims (C1a, C1b, C2, C3; decided by `tf_ntk.study.claims`' primary endpoints).

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

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
import os
from typing import Any

from tf_ntk import data
from tf_ntk import rundir
from tf_ntk.study import presets
from tf_ntk.study import sweep

# Cost model, in train-step equivalents (one SGD step of the standard network on one batch), from
# bench/results/steps.txt: a linearized or centered step costs ~1.3 standard steps, one PGD step
# ~0.65 (a forward and backward pass to the input, no weight update), a forward pass ~1/3.
DYNAMICS_STEP_COST = {"standard": 1.0, "linearized": 1.3, "centered": 1.3}
ATTACK_STEP_COST = 0.65
FORWARD_COST = 1 / 3


def epoch_name(epoch: float) -> str:
    """"0.25", "2": how an epoch appears in run names."""
    return f"{float(epoch):g}"


def phase1_name(source: str, seed: int) -> str:
    return f"{source}-s{seed}"


def replica_name(source: str, seed: int) -> str:
    """The matched-floor run of ``phase1_name(source, seed)``."""
    return f"{source}-s{seed}-{presets.REPLICA}"


def phase2_name(dynamics: str, data_mode: str, source: str, seed: int, spawn: float) -> str:
    return f"{dynamics}-{data_mode}-from-{source}-s{seed}-e{epoch_name(spawn)}"


def child_name(dynamics: str, data_mode: str, source: str, seed: int, spawn: float) -> str:
    """The phase-2 run of ``source``'s spawn (at epoch 0, the initialisation: the standard one's)."""
    return phase2_name(dynamics, data_mode, "standard" if spawn == 0 else source, seed, spawn)


def transfer_name(source: str, seed: int, spawn: float) -> str:
    return f"{source}-s{seed}-e{epoch_name(spawn)}"


TRANSFER_SET = "adversarial.npz"  # in transfer/<name>/: the spawn's protocol PGD examples


def _other(source: str) -> str:
    return presets.SOURCES[1 - presets.SOURCES.index(source)]


def phase1_sources(preset: presets.Preset) -> tuple[str, ...]:
    """The phase-1 trainings of ``preset``: standard, adversarial (and flip)."""
    return presets.SOURCES + ((presets.FLIP,) if preset.flip else ())


def phase1_runs(preset: presets.Preset) -> list[str]:
    """Every phase-1 run name: each source and seed, and the matched-floor replicas."""
    names = [phase1_name(s, seed) for s in phase1_sources(preset) for seed in preset.seed_list()]
    if preset.matched_floor:
        names += [replica_name(s, seed) for s in presets.SOURCES for seed in preset.seed_list()]
    return names


def evaluated_runs(preset: presets.Preset) -> list[tuple[Any, ...]]:
    """[(run, phase, source, seed, dynamics, data, spawn epoch)] of every evaluated run, in plan
    order."""
    rows: list[tuple[Any, ...]] = []
    for source in phase1_sources(preset):
        for s in preset.seed_list():
            data_mode = {"standard": "clean", "adversarial": "adv", presets.FLIP: "flip"}[source]
            rows.append((phase1_name(source, s), "1", source, s, "standard", data_mode, None))
    flip = preset.flip_epoch()
    for source in phase1_sources(preset):
        for s in preset.seed_list():
            for spawn in preset.spawn_epochs:
                if (spawn == 0 and source != "standard") or (source == presets.FLIP and spawn < flip):
                    continue
                for dynamics, data_mode in preset.phase2_conditions():
                    if source == presets.FLIP and (dynamics, data_mode) != ("centered", "clean"):
                        continue
                    if spawn == 0 and dynamics != "centered":
                        continue
                    rows.append((phase2_name(dynamics, data_mode, source, s, spawn), "2",
                                 source, s, dynamics, data_mode, float(spawn)))
    return rows


def _epochs_arg(epochs: Iterable[float]) -> str:
    return ",".join(epoch_name(e) for e in epochs)


def _train_step_cost(preset: presets.Preset, dynamics: str, adversarial: bool) -> float:
    cost = DYNAMICS_STEP_COST[dynamics]
    if not adversarial:
        return cost
    attack = preset.train_attack_steps * ATTACK_STEP_COST * cost
    return (cost if preset.adv_mode == "clean_then_adv" else 0.0) + attack + cost


# Share of the images still robust when the strong ensemble's later members run (each member attacks
# only what the earlier ones left standing): about half for adversarially trained models, ~0 for
# standard ones.
SURVIVING_SHARE = 0.5


def eval_examples(preset: presets.Preset, primary: bool = False) -> int | None:
    """Test examples an evaluation reads (None: the whole test set)."""
    return preset.primary_examples if primary else preset.eval_examples


def _eval_cost(preset: presets.Preset, dynamics: str, examples: int | None = None, restarts: int | None = None,
               queries: int | None = None) -> float:
    """Benign + protocol PGD + the strong ensemble (tf_ntk.robust.ensembles.strong: PGD-CE and PGD-margin,
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


def _kernel_cost(preset: presets.Preset, epochs: Sequence[float]) -> float:
    """Per-example gradients of every logit on the probe sets, ~ one step per batch of gradients."""
    num_classes = data.info(preset.dataset).num_classes
    probe = num_classes * (preset.per_class + preset.test_per_class)
    return len(epochs) * 2 * probe * num_classes / preset.batch_size


def _kernel_machine_cost(preset: presets.Preset) -> float:
    """Per spawn: the kernel on the training subset (as `_kernel_cost`), the JVP pass of Δθ, and a
    centered model's evaluation."""
    num_classes = data.info(preset.dataset).num_classes
    n = num_classes * preset.kernel_machine_per_class
    kernel = 2 * n * num_classes / preset.batch_size
    return len(preset.machine_epochs()) * (kernel + _eval_cost(preset, "centered"))


class _Planner:
    """Builds `plan`'s jobs family by family (each method adds one family's jobs)."""

    def __init__(self, preset: presets.Preset, sweep_dir: str) -> None:
        self.preset = preset
        self.sweep_dir = sweep_dir
        self.jobs: list[sweep.Job] = []
        self.common = [f"--dataset={preset.dataset}", f"--model={preset.model}",
                       f"--eps={preset.eps!r}", f"--batch_size={preset.batch_size}"]
        if preset.width is not None:
            self.common.append(f"--width={preset.width}")
        if preset.jit_compile:
            self.common.append("--jit_compile")
        self.common += preset.strategy_args()
        self.steps = preset.steps_per_epoch()

    def path(self, *parts: str) -> str:
        return os.path.join(self.sweep_dir, *parts)

    def add(self, name: str, module: str, args: Sequence[str], output: str | None, deps: Sequence[str] = (),
            cost: float = 0.0) -> str:
        self.jobs.append(sweep.Job(name, module, tuple(args), output, tuple(deps), cost=cost))
        return name

    def spawn(self, run: str, epoch: float) -> str:
        return self.path("phase1", run, "spawn", f"epoch_{epoch_name(epoch)}")

    def evaluate(self, run_name: str, run_dir: str, epoch: float, dynamics: str, deps: Sequence[str],
                 primary: bool = False, extra: Sequence[str] = ()) -> str:
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
        output = os.path.join(run_dir, "eval", f"epoch_{epoch_name(epoch)}", rundir.EVALUATION)
        cost = _eval_cost(p, dynamics, examples, restarts, queries) * (2.5 if primary else 1.0)
        return self.add(f"eval/{run_name}", "tf_ntk.cli.evaluate", args, output, deps, cost)

    def phase1(self) -> None:
        p = self.preset
        final = float(p.phase1_epochs)
        primary = set(presets.SOURCES)
        for source in phase1_sources(p):
            for seed in p.seed_list():
                adversarial = source != "standard"
                data_mode = {"standard": "clean", "adversarial": "adv", presets.FLIP: "flip"}[source]
                runs: list[tuple[str, int | None]] = [(phase1_name(source, seed), None)]
                if p.matched_floor and source in presets.SOURCES:
                    runs.append((replica_name(source, seed), seed + presets.REPLICA_DATA_SEED))
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
                    if source == presets.FLIP:
                        args.append(f"--flip_epoch={p.flip_epoch()}")
                    cost = p.phase1_epochs * self.steps * _train_step_cost(p, "standard", adversarial)
                    if source == presets.FLIP:
                        cost = cost / 2 + p.phase1_epochs / 2 * self.steps
                    self.add(f"phase1/{name}", "tf_ntk.cli.train", args,
                             os.path.join(run, rundir.RESULTS), cost=cost)
                    if data_seed is None:  # the replicas only give kernels
                        self.evaluate(name, run, final, "standard", [f"phase1/{name}"],
                                      primary=source in primary)

    def transfer(self) -> None:
        """Per spawn > 0 of each source and seed: the protocol PGD's examples of that spawn (standard
        dynamics), saved for its centered children and its sibling's."""
        p = self.preset
        if not p.transfer:
            return
        for source in presets.SOURCES:
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
                             os.path.join(out, rundir.EVALUATION),
                             (f"phase1/{phase1_name(source, seed)}",), cost)

    def phase2(self) -> None:
        p = self.preset
        last = p.last_spawn()
        flip = p.flip_epoch()
        for source in phase1_sources(p):
            for seed in p.seed_list():
                parent = phase1_name(source, seed)
                for spawn in p.spawn_epochs:
                    if spawn == 0 and source != "standard":
                        continue  # the initialisation: the same for every source
                    if source == presets.FLIP and spawn < flip:
                        continue  # before the flip, the standard run's spawn
                    for dynamics, data_mode in p.phase2_conditions():
                        if source == presets.FLIP and (dynamics, data_mode) != ("centered", "clean"):
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
                                 os.path.join(run, rundir.RESULTS), (f"phase1/{parent}",), cost)
                        extra, deps = [], [f"phase2/{name}"]
                        if dynamics == "linearized":
                            extra.append("--output_terms")
                        if (p.transfer and dynamics == "centered" and spawn > 0
                                and source in presets.SOURCES):
                            sets = [transfer_name(s, seed, spawn)
                                    for s in (source, _other(source))]
                            extra.append("--transfer_from=" + ",".join(
                                self.path("transfer", s, TRANSFER_SET) for s in sets))
                            deps += [f"transfer/{s}" for s in sets]
                        primary = (dynamics == "centered" and spawn == last and source in presets.SOURCES)
                        self.evaluate(name, run, p.phase2_epochs, dynamics, deps, primary, extra)

    def kernels(self) -> None:
        p = self.preset
        kernel_args = [f"--per_class={p.per_class}", f"--test_per_class={p.test_per_class}",
                       f"--kernel_cache={self.path('kernels', 'cache')}", f"--dataset={p.dataset}",
                       *p.strategy_args()]
        cost = _kernel_cost(p, p.save_epochs())
        for name in phase1_runs(p):
            out = self.path("kernels", name)
            self.add(f"kernels/{name}", "tf_ntk.cli.kernel_dynamics",
                     (f"--run={self.path('phase1', name)}", f"--workdir={out}", *kernel_args),
                     os.path.join(out, rundir.KERNEL_DYNAMICS), (f"phase1/{name}",), cost)
        for a, b in comparison_pairs(p):
            out = self.path("kernels", f"{a}_vs_{b}")
            self.add(f"kernels/{a}_vs_{b}", "tf_ntk.cli.kernel_dynamics",
                     (f"--run={self.path('phase1', a)}", f"--compare_run={self.path('phase1', b)}",
                      f"--workdir={out}", "--compare_only", *kernel_args),
                     os.path.join(out, rundir.COMPARISON), (f"kernels/{a}", f"kernels/{b}"))

    def features(self) -> None:
        p = self.preset
        if not p.eigen_images:
            return
        final = float(p.phase1_epochs)
        for source in presets.SOURCES:
            name = phase1_name(source, p.seed_list()[0])
            out = self.path("features", name)
            self.add(f"features/{name}", "tf_ntk.cli.visualize_features",
                     (f"--checkpoint={self.spawn(name, final)}", f"--workdir={out}",
                      f"--per_class={p.per_class}", f"--num_eigen={p.eigen_images}",
                      f"--feature_steps={p.eigen_steps}", f"--dataset={p.dataset}"),
                     os.path.join(out, rundir.EIGEN_IMAGES), (f"phase1/{name}",),
                     _kernel_cost(p, [final]) + 2 * p.eigen_images * p.eigen_steps
                     / p.batch_size * p.per_class)

    def kernel_machines(self) -> None:
        p = self.preset
        machine_epochs = p.machine_epochs()
        for source in presets.SOURCES if machine_epochs else ():
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
                         os.path.join(out, rundir.KERNEL_MACHINE), (f"phase1/{name}",),
                         _kernel_machine_cost(p))


def plan(preset: presets.Preset, sweep_dir: str, report_args: Sequence[str] | None = None) -> list[sweep.Job]:
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
BENCH_RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench",
                             "results")


def step_seconds(preset: presets.Preset, results_dir: str = BENCH_RESULTS) -> dict[str, tuple[float, str]] | None:
    """{device kind: (seconds per train-step equivalent, where the number comes from)}, or None when
    ``preset``'s standard step is not the benchmarked ResNet-18 step (its cost has no device table)."""
    if (preset.model, preset.width, preset.batch_size, data.info(preset.dataset).image_shape) != (
            "resnet18", None, 128, (32, 32, 3)):
        return None
    out = {}
    for kind, estimate in STEP_SECONDS_ESTIMATE.items():
        path = os.path.join(results_dir, f"accelerator_{kind}.json")
        out[kind] = estimate
        if rundir.exists(path):
            record = rundir.read_json(path, what="accelerator benchmark record")
            key = "standard_xla" if preset.jit_compile else "standard_tf"
            seconds = record.get("steps_seconds", {}).get(key)
            if seconds and not record.get("smoke"):
                out[kind] = (seconds, f"measured on {record.get('device_model', kind)} "
                                      f"(bench/results/accelerator_{kind}.json, {key})")
    return out


def cost_table(jobs: Iterable[sweep.Job]) -> list[tuple[str, int, float]]:
    """[(kind, number of jobs, cost in train-step equivalents)] by the first part of job names."""
    groups: dict[str, tuple[int, float]] = {}
    for job in jobs:
        kind = job.name.split("/", 1)[0]
        count, cost = groups.get(kind, (0, 0.0))
        groups[kind] = (count + 1, cost + job.cost)
    return [(kind, count, cost) for kind, (count, cost) in groups.items()]


def comparison_pairs(preset: presets.Preset) -> list[tuple[str, str]]:
    """(run a, run b) name pairs whose kernels are compared: standard vs adversarial for every seed
    (C1); each run against its matched-floor replica (the same initialisation, another data seed:
    independent pairs, no run in two of them); the flip run against the adversarial one."""
    pairs = []
    for seed in preset.seed_list():
        pairs.append((phase1_name("standard", seed), phase1_name("adversarial", seed)))
        if preset.matched_floor:
            pairs += [(phase1_name(s, seed), replica_name(s, seed)) for s in presets.SOURCES]
        if preset.flip:
            pairs.append((phase1_name(presets.FLIP, seed), phase1_name("adversarial", seed)))
    return pairs
