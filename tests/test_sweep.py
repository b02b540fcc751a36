"""The job graph and the local pool (with a fake job runner), and the study's plan: dependencies,
names, the baseline pairs, the cost model, preset validation."""

import os

import pytest

from tf_ntk.study import plan
from tf_ntk.study import presets
from tf_ntk.study import sweep


def fake_execute(module, args, log_path):
    """Writes the job's --out file unless --fail is given (runs in the pool's worker processes)."""
    values = dict(a.split("=", 1) for a in args if "=" in a)
    with open(log_path, "w", encoding="utf-8") as f:
        f.write(f"{module} {args}\n")
    if "--fail" in args:
        return "asked to fail"
    with open(values["--out"], "w", encoding="utf-8") as f:
        f.write(str(os.getpid()))
    return None


def _job(tmp_path, name, deps=(), fail=False):
    out = str(tmp_path / f"{name}.out")
    return sweep.Job(name, "fake", (f"--out={out}",) + (("--fail",) if fail else ()), out, deps)


def test_order_puts_dependencies_first_and_rejects_bad_graphs(tmp_path):
    a, b, c = _job(tmp_path, "a"), _job(tmp_path, "b", ("c",)), _job(tmp_path, "c", ("a",))
    assert [j.name for j in sweep.order([b, c, a])] == ["a", "c", "b"]
    with pytest.raises(ValueError, match="unknown job x"):
        sweep.order([_job(tmp_path, "a", ("x",))])
    with pytest.raises(ValueError, match="cycle"):
        sweep.order([_job(tmp_path, "a", ("b",)), _job(tmp_path, "b", ("a",))])
    with pytest.raises(ValueError, match="two jobs named a"):
        sweep.order([a, a])


def test_pool_runs_skips_done_and_blocks_dependents_of_failures(tmp_path):
    (tmp_path / "done.out").write_text("earlier")
    jobs = [_job(tmp_path, "done"), _job(tmp_path, "a", ("done",)), _job(tmp_path, "bad", fail=True),
            _job(tmp_path, "after_bad", ("bad", "a")), _job(tmp_path, "b", ("a",))]
    events = []
    outcome = sweep.run_local(jobs, fake_execute, workers=2, log_dir=str(tmp_path / "logs"),
                              report=lambda event, job, detail: events.append((event, job.name)))
    assert outcome.skipped == ["done"]
    assert sorted(outcome.ran) == ["a", "b"]
    assert outcome.failed == {"bad": "asked to fail"}
    assert outcome.blocked == ["after_bad"] and not outcome.ok
    assert (tmp_path / "done.out").read_text() == "earlier"  # a done job is not rerun
    assert ("blocked", "after_bad") in events
    assert events.index(("done", "a")) < events.index(("start", "b"))  # b waited for a
    assert (tmp_path / "logs" / "bad.log").exists()



def test_workers_are_replaced_after_their_share_of_jobs(tmp_path):
    jobs = [_job(tmp_path, "a"), _job(tmp_path, "b", ("a",)), _job(tmp_path, "c", ("b",))]
    sweep.run_local(jobs, fake_execute, workers=1, log_dir=str(tmp_path / "logs"), jobs_per_worker=2)
    pids = [(tmp_path / f"{name}.out").read_text() for name in ("a", "b", "c")]
    assert pids[0] == pids[1] != pids[2]  # a fresh process after two jobs: bounded memory


def test_threads_per_worker_share_the_cores():
    assert sweep.threads_per_worker(2, cores=2) == 1
    assert sweep.threads_per_worker(1, cores=2) == 2
    assert sweep.threads_per_worker(3, cores=16) == 5
    assert sweep.threads_per_worker(4, cores=2) == 1


def test_comparison_pairs_are_independent_matched_floors():
    preset = presets.PRESETS["smoke"].replace(seeds=3, seed_base=5)
    pairs = plan.comparison_pairs(preset)
    assert pairs[:4] == [("standard-s5", "adversarial-s5"), ("standard-s5", "standard-s5-rep"),
                         ("adversarial-s5", "adversarial-s5-rep"), ("flip-s5", "adversarial-s5")]
    floors = [p for p in pairs if p[1].endswith("-rep")]
    assert len(floors) == 2 * 3
    runs = [r for p in floors for r in p]
    assert len(runs) == len(set(runs))  # no run in two matched-floor pairs: independent pairs
    assert all(a + "-rep" == b for a, b in floors)  # each run against its own replica
    assert plan.comparison_pairs(preset.replace(matched_floor=False, flip=False)) == [
        (f"standard-s{s}", f"adversarial-s{s}") for s in (5, 6, 7)]


def test_quick_plan_structure(tmp_path):
    preset = presets.PRESETS["quick"]
    jobs = plan.plan(preset, str(tmp_path))
    names = [j.name for j in jobs]
    assert len(names) == len(set(names))
    by_name = {j.name: j for j in jobs}
    seeds = preset.seeds
    assert preset.seed_list() == (100, 101, 102)
    conditions = preset.phase2_conditions()
    assert conditions == [("centered", "clean"), ("centered", "adv")]
    later = [e for e in preset.spawn_epochs if e > 0]
    # standard, adversarial; their matched-floor replicas.
    assert sum(n.startswith("phase1/") for n in names) == 2 * seeds + 2 * seeds
    # Spawn 0 (the initialisation) once per seed.
    phase2 = seeds * len(conditions) * (1 + 2 * len(later))
    assert sum(n.startswith("phase2/") for n in names) == phase2
    assert sum(n.startswith("eval/") for n in names) == 2 * seeds + phase2
    assert sum(n.startswith("transfer/") for n in names) == 2 * seeds * len(later)
    assert sum(n.startswith("kernels/") for n in names) == 4 * seeds + len(plan.comparison_pairs(preset))
    assert sum(n.startswith("kernel_machine/") for n in names) == 2 * seeds
    km = by_name["kernel_machine/adversarial-s101"]
    assert km.deps == ("phase1/adversarial-s101",) and "--at_epochs=1,10" in km.args
    assert "--train_per_class=20" in km.args and "--test_examples=180" in km.args
    job = by_name["phase2/centered-clean-from-adversarial-s101-e1"]
    assert job.deps == ("phase1/adversarial-s101",)
    assert f"--spawn={tmp_path}/phase1/adversarial-s101/spawn/epoch_1" in job.args
    assert "--seed=101" in job.args and "--dynamics=centered" in job.args
    assert "phase2/centered-clean-from-adversarial-s101-e0" not in by_name
    assert "phase2/standard-adv-from-standard-s101-e1" not in by_name  # standard dynamics: clean only
    assert presets.PRESETS["digits"].phase2_conditions()[-1] == ("standard", "clean")
    # The replica: the same initialisation seed, another data seed.
    rep = by_name["phase1/adversarial-s101-rep"]
    assert "--seed=101" in rep.args and f"--data_seed={101 + presets.REPLICA_DATA_SEED}" in rep.args
    flip_plan = {j.name: j for j in plan.plan(preset.replace(flip=True), str(tmp_path))}
    flip = flip_plan["phase1/flip-s100"]
    assert "--data_mode=flip" in flip.args and "--flip_epoch=5" in flip.args
    assert "phase2/centered-clean-from-flip-s100-e10" in flip_plan
    assert "phase2/centered-clean-from-flip-s100-e1" not in flip_plan  # before the flip: standard's
    # Transfer: the parent's and the sibling's PGD examples on every centered child of a spawn > 0.
    ev = by_name["eval/centered-adv-from-standard-s100-e10"]
    assert set(ev.deps) == {"phase2/centered-adv-from-standard-s100-e10",
                            "transfer/standard-s100-e10", "transfer/adversarial-s100-e10"}
    assert (f"--transfer_from={tmp_path}/transfer/standard-s100-e10/adversarial.npz,"
            f"{tmp_path}/transfer/adversarial-s100-e10/adversarial.npz") in ev.args
    # Primary checkpoints at full strength with the sanity report; the others lighter.
    assert {"--sanity_checks", "--strong_restarts=2", "--square_queries=500"} <= set(ev.args)
    assert not any(a.startswith("--max_examples") for a in ev.args)  # the whole test set
    light = by_name["eval/centered-adv-from-standard-s100-e1"]
    assert "--sanity_checks" not in light.args and "--max_examples=180" in light.args
    assert by_name["kernels/standard-s100_vs_adversarial-s100"].deps == (
        "kernels/standard-s100", "kernels/adversarial-s100")
    assert by_name["eval/adversarial-s102"].output == (
        f"{tmp_path}/phase1/adversarial-s102/eval/epoch_10/evaluation.json")
    # Dependency order, and the report last.
    seen = set()
    for j in jobs:
        assert set(j.deps) <= seen, j.name
        seen.add(j.name)
    assert names[-1] == "report" and jobs[-1].output is None
    # Phase 1 saves every spawn and kernel epoch, fractional ones included.
    p1 = by_name["phase1/standard-s100"]
    assert "--save_epochs=0,0.125,0.25,0.5,1,2,4,6,8,10" in p1.args


def test_presets_use_disjoint_seeds():
    used = {}
    for name, preset in presets.PRESETS.items():
        for seed in preset.seed_list():
            assert seed not in used, f"{name} and {used.get(seed)} share seed {seed}"
            used[seed] = name


def test_cost_model_closed_form(tmp_path):
    """Phase-1 adversarial, clean-then-adversarial: (1 + 0.65 k + 1) per step; centered x1.3."""
    preset = presets.PRESETS["smoke"]  # digits: 1437 images, batch 256 -> 6 steps; k = 2 PGD steps
    by_name = {j.name: j for j in plan.plan(preset, str(tmp_path))}
    assert by_name["phase1/standard-s0"].cost == pytest.approx(2 * 6 * 1.0)
    assert by_name["phase1/adversarial-s0"].cost == pytest.approx(2 * 6 * (2 + 2 * 0.65))
    assert by_name["phase2/centered-adv-from-standard-s0-e2"].cost == pytest.approx(
        1 * 6 * 1.3 * (2 + 2 * 0.65))


@pytest.mark.parametrize("changes, message", [
    ({"spawn_epochs": (0.5, 30.0)}, r"spawn_epochs \[30.0\] outside"),
    ({"kernel_epochs": (0.0, 1.0)}, "must include the last epoch"),
    ({"phase2_dynamics": ("kernel",)}, "centered, linearized and/or standard"),
    ({"phase2_dynamics": ("standard",)}, "needs centered phase 2 on clean data"),
    ({"seed_base": -1}, "seeds must lie in"),
    ({"phase2_data": ()}, "clean and/or adv"),
    ({"seeds": 0}, "seeds must be >= 1"),
    ({"eval_examples": 5000}, r"eval_examples must be in \[1, 360\]"),
    ({"dataset": "imagenet"}, "unknown data set"),
    ({"job_strategy": "multi_worker"}, "job_strategy must be one of default, mirrored, tpu"),
])
def test_preset_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        presets.PRESETS["quick"].replace(**changes)


@pytest.mark.parametrize("name", ["cifar10", "cifar10-full"])
def test_cifar10_presets_are_the_protocol(name):
    p = presets.PRESETS[name]
    assert (p.model, p.eps, p.phase1_epochs, p.train_attack_steps, p.eval_steps) == (
        "resnet18", 4 / 255, 101, 20, 100)
    assert p.per_class * 10 == 500 and p.phase2_epochs == 100 and p.phase2_lr == 0.01
    assert p.phase2_dynamics == ("centered", "linearized", "standard") and p.phase2_data == ("clean", "adv")
    assert p.primary_restarts == 10 and p.primary_square_queries == 5000 and p.primary_examples is None
    assert p.last_spawn() == 100 and p.job_resources()["*"]["num_gpus"] == 1
    if name == "cifar10-full":  # every whole epoch 0..100 and the 7 fractional ones
        assert len(p.spawn_epochs) == 101 + 7 and p.eval_examples is None
    else:
        assert p.spawn_epochs == (0.0, 0.125, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def test_a_shorter_phase1_trims_the_grids_and_ends_them_at_its_last_epoch():
    p = presets.PRESETS["quick"].replace(phase1_epochs=3)
    assert p.spawn_epochs == (0.0, 1.0, 3.0)
    assert p.kernel_epochs == (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 3.0)
    q = presets.PRESETS["quick"].replace(phase1_epochs=3, spawn_epochs=(1.0,))
    assert q.spawn_epochs == (1.0,)
    assert presets.Preset.from_dict(p.to_dict()) == p


def test_job_strategy_reaches_the_training_and_kernel_jobs_only(tmp_path):
    preset = presets.PRESETS["smoke"].replace(job_strategy="tpu", jit_compile=True)
    jobs = plan.plan(preset, str(tmp_path))
    tpu = ("--strategy=tpu", "--tpu=local")
    for job in jobs:
        on_tpu = all(a in job.args for a in tpu)
        if job.module in ("tf_ntk.cli.train", "tf_ntk.cli.kernel_dynamics"):
            assert on_tpu, job.name
        else:
            assert not any(a.startswith(("--strategy", "--tpu")) for a in job.args), job.name
        if job.module == "tf_ntk.cli.train":
            assert "--jit_compile" in job.args, job.name
    # Run-only: the numbers' record is the default preset's, so a sweep may resume on another device.
    assert preset.numbers_dict() == presets.PRESETS["smoke"].replace(jit_compile=True).numbers_dict()
    assert presets.PRESETS["smoke"].strategy_args() == ()
    assert presets.PRESETS["smoke"].replace(job_strategy="mirrored").strategy_args() == ("--strategy=mirrored",)
