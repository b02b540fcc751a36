"""Every binary, handed bad input, ends in one line on stderr and exit status 2, leaves nothing
behind, and leaves good data byte-identical.

Each case runs in-process through absl parsing and `tf_ntk.cli.common.run` (as the command line does),
against a shared finished run (``good``) and a per-case scratch directory; the whole of both is
hashed before and after. The disk-full case needs a small tmpfs, which only a subprocess in its own
mount namespace can have: it is skipped, with the reason, where the machine does not allow one.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tf_ntk import checkpoints
from tf_ntk import dynamics
from tf_ntk.cli import compute_kernel
from tf_ntk.cli import evaluate
from tf_ntk.cli import kernel_dynamics
from tf_ntk.cli import kernel_machine
from tf_ntk.cli import reproduce
from tf_ntk.cli import results
from tf_ntk.cli import startup
from tf_ntk.cli import train
from tf_ntk.cli import visualize_features
from tf_ntk.robust import evaluation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--width=4", "--eps=0.2", "--attack_steps=2", "--eval_attack_steps=2", "--batch_size=256"]
GOOD = TINY + ["--epochs=1", "--save_epochs=0,1", "--eval_every=0"]

pytestmark = pytest.mark.xdist_group("bad_inputs")  # one worker builds the shared run


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A finished phase-1 run (spawns at epochs 0 and 1) and an evaluation of its last checkpoint,
    with its adversarial set (adv.npz: the first 16 digits test images, L∞ ε = 0.2)."""
    root = tmp_path_factory.mktemp("good")
    helpers.run_binary(train, [f"--workdir={root}/run"] + GOOD)
    helpers.run_binary(evaluate, [f"--checkpoint={root}/run/spawn/epoch_1", "--attack=protocol",
                                  "--attack_steps=2", "--max_examples=16", "--eps=0.2",
                                  f"--save_adversarial={root}/adv.npz",
                                  f"--workdir={root}/run/eval/epoch_1"])
    return root


def _snapshot(*roots):
    """{path: sha256 or "dir"} of everything under ``roots``."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = "dir"
            for f in filenames:
                path = os.path.join(dirpath, f)
                with open(path, "rb") as fh:
                    out[path] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _copy_checkpoint(good, tmp, name):
    dst = tmp / name
    shutil.copytree(good / "run" / "spawn" / "epoch_1", dst)
    return dst


def _data_file(checkpoint):
    return next(p for p in checkpoint.iterdir() if p.name.startswith("ckpt.data"))


def _truncated(good, tmp):
    ckpt = _copy_checkpoint(good, tmp, "truncated")
    with open(_data_file(ckpt), "r+b") as f:
        f.truncate(10)


def _empty_data(good, tmp):
    _data_file(_copy_checkpoint(good, tmp, "empty_data")).write_bytes(b"")


def _truncated_index(good, tmp):
    ckpt = _copy_checkpoint(good, tmp, "truncated_index")
    with open(ckpt / "ckpt.index", "r+b") as f:
        f.truncate(5)


def _meta(text):
    def setup(good, tmp):
        (_copy_checkpoint(good, tmp, "meta") / "meta.json").write_text(text)
    return setup


def _meta_edit(edit):
    """A copy of the good spawn whose meta.json is ``edit(meta)``."""
    def setup(good, tmp):
        path = _copy_checkpoint(good, tmp, "meta") / "meta.json"
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return setup


def _meta_run(text):
    """A run (``{tmp}/metarun``) whose one spawn records ``text`` as its meta.json."""
    def setup(good, tmp):
        ckpt = tmp / "metarun" / "spawn" / "epoch_1"
        shutil.copytree(good / "run" / "spawn" / "epoch_1", ckpt)
        (ckpt / "meta.json").write_text(text)
    return setup


def _without(key):
    return lambda meta: {k: v for k, v in meta.items() if k != key}


def _model_without(key):
    return lambda meta: {**meta, "model": {k: v for k, v in meta["model"].items() if k != key}}


def _a_file(good, tmp):
    (tmp / "afile").write_text("not a directory\n")


def _empty_npz(good, tmp):
    (tmp / "empty.npz").write_bytes(b"")


def _other_shape_npz(good, tmp):
    x = np.zeros((4, 4, 4, 1), np.float32)
    np.savez(tmp / "other.npz", x=x, x_adv=x, y=np.zeros(4, np.int64), meta=json.dumps({}))


def _adv_set(change):
    """A setup writing {tmp}/adv.npz: the good set (`good`'s adv.npz) with ``change(arrays, meta)``."""
    def setup(good, tmp):
        with np.load(good / "adv.npz") as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
        change(arrays, meta)
        np.savez(tmp / "adv.npz", meta=np.array(json.dumps(meta)), **arrays)
    return setup


def _set_item(name, index, value):
    def change(arrays, meta):
        arrays[name][index] = value
    return change


def _outside_ball(arrays, meta):
    arrays["x_adv"][4] = 1 - arrays["x"][4]  # in [0, 1], up to 1 from the clean image


def _scaled(arrays, meta):
    arrays["x_adv"][2] *= 1e6


def _no_examples(arrays, meta):
    for k in ("x", "x_adv", "y", "indices"):
        arrays[k] = arrays[k][:0]


def _other_images(arrays, meta):
    for k in ("x", "x_adv", "y"):  # a sound set, of other images than those at its indices
        arrays[k] = np.roll(arrays[k], 1, axis=0)


def _fewer_indices(arrays, meta):
    arrays["indices"] = arrays["indices"][:-1]


def _other_dataset(arrays, meta):
    meta["data"]["dataset"] = "mnist"


def _no_ball(arrays, meta):
    del meta["eps"], meta["norm"], meta["attack"]["eps"], meta["attack"]["norm"]


def _previous_format(arrays, meta):
    """The format before sets recorded their ε-ball, data, indices and classes."""
    del arrays["indices"]
    for k in ("format", "eps", "norm", "data", "num_classes"):
        del meta[k]


def _previous_format_other_images(arrays, meta):
    _previous_format(arrays, meta)
    _other_images(arrays, meta)


def _unfinished_copy(good, tmp):
    shutil.copytree(good / "run", tmp / "unfinished")
    (tmp / "unfinished" / "results.json").unlink()


def _locked(good, tmp):
    shutil.copytree(good / "run", tmp / "locked")
    (tmp / "locked" / "results.json").unlink()
    (tmp / "locked" / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename}))


def _corrupt_results(good, tmp):
    shutil.copytree(good / "run", tmp / "root" / "ok")
    (tmp / "root" / "broken").mkdir()
    (tmp / "root" / "broken" / "results.json").write_text('{"benign_accuracy": 0.5')


def _corrupt_run_record(good, tmp):
    shutil.copytree(good / "run", tmp / "badrecord")
    (tmp / "badrecord" / "results.json").unlink()
    (tmp / "badrecord" / "run.json").write_text("[1, 2]")


def _corrupt_resume(good, tmp):
    shutil.copytree(good / "run", tmp / "badresume")
    (tmp / "badresume" / "results.json").unlink()
    _data_file(tmp / "badresume" / "resume").write_bytes(b"\0" * 7)


def _no_spawns(good, tmp):
    (tmp / "empty_run").mkdir()


def _not_a_sweep(good, tmp):
    (tmp / "busy").mkdir()
    (tmp / "busy" / "notes.txt").write_text("mine\n")


def _truncated_run(good, tmp):
    ckpt = tmp / "brokenrun" / "spawn" / "epoch_1"
    shutil.copytree(good / "run" / "spawn" / "epoch_1", ckpt)
    with open(_data_file(ckpt), "r+b") as f:
        f.truncate(10)


CKPT = "--checkpoint={good}/run/spawn/epoch_1"
TRANSFER = "--transfer_from={tmp}/adv.npz"
META = "corrupt checkpoint record {tmp}/meta/meta.json: "
NO_MODEL = "checkpoint {tmp}/meta does not record its model (no \"model\" in {tmp}/meta/meta.json)"
RUN_NO_MODEL = "checkpoint {tmp}/metarun/spawn/epoch_1 does not record its model (no \"model\" in " \
    "{tmp}/metarun/spawn/epoch_1/meta.json)"
# (id, binary, argv, setup(good, tmp) or None, the error line's expected text)
CASES = [
    # train: flags
    ("train-eps-range", train, ["--eps=1.5"], None, "--eps=1.5: 1.5 is not a number in the range [0.0, 1.0]"),
    ("train-unknown-flag", train, ["--no_such_flag=1"], None, "Unknown command line flag 'no_such_flag'"),
    ("train-eps-zero-division", train, ["--eps=4/0"], None, "'4/0' is not a number or a fraction like 4/255"),
    ("train-lr-nan", train, ["--lr=nan"], None, "'nan' is not a finite number"),
    ("train-lr-inf", train, ["--lr=inf"], None, "'inf' is not a finite number"),
    ("train-momentum-nan", train, ["--momentum=nan"], None, "'nan' is not a finite number"),
    ("train-lr-factor-inf", train, ["--lr_factor=-inf"], None, "not a finite number"),
    ("train-step-size-inf", train, ["--attack_step_size=inf"], None, "not a finite number"),
    ("train-epochs-zero", train, ["--epochs=0"], None, "--epochs=0: 0 is not a positive integer"),
    ("train-batch-zero", train, ["--batch_size=0"], None, "--batch_size=0"),
    ("train-save-epochs", train, ["--epochs=1", "--save_epochs=0,x"], None,
     "flag --save_epochs=0,x: '0,x' is not numbers separated by commas"),
    ("train-lr-boundaries", train, ["--epochs=1", "--lr_boundaries=a"], None,
     "flag --lr_boundaries=a: 'a' is not numbers separated by commas"),
    ("train-positional", train, ["--epochs=1", "extra"], None, "unexpected arguments: extra"),
    ("train-centered-without-spawn", train, ["--epochs=1", "--dynamics=centered"], None,
     "--dynamics=centered needs --spawn (phase 2 starts from a checkpoint)"),
    # train: files
    ("train-spawn-missing", train, ["--epochs=1", "--spawn={tmp}/nowhere"], None, "no checkpoint at {tmp}/nowhere"),
    ("train-spawn-not-a-checkpoint", train, ["--epochs=1", "--spawn={tmp}"], None,
     "{tmp} is not a tf_ntk checkpoint (no meta.json or ckpt.index)"),
    ("train-spawn-truncated-data", train, ["--epochs=1", "--spawn={tmp}/truncated"], _truncated,
     "corrupt checkpoint {tmp}/truncated (truncated or damaged files"),
    ("train-spawn-empty-data", train, ["--epochs=1", "--spawn={tmp}/empty_data"], _empty_data,
     "corrupt checkpoint {tmp}/empty_data (truncated or damaged files"),
    ("train-spawn-meta-list", train, ["--epochs=1", "--spawn={tmp}/meta"], _meta("[]"),
     "corrupt checkpoint record {tmp}/meta/meta.json: expected a JSON dict, got list"),
    ("train-spawn-meta-model-string", train, ["--epochs=1", "--spawn={tmp}/meta"], _meta('{"model": "cnn"}'),
     "corrupt checkpoint record {tmp}/meta/meta.json: \"model\" is not a JSON object"),
    ("train-spawn-meta-empty", train, ["--epochs=1", "--spawn={tmp}/meta"], _meta("{}"), NO_MODEL),
    ("train-spawn-meta-no-epoch", train, ["--epochs=1", "--spawn={tmp}/meta"], _meta_edit(_without("epoch")),
     META + 'no "epoch"'),
    ("train-spawn-meta-no-options", train, ["--epochs=1", "--spawn={tmp}/meta"],
     _meta_edit(_model_without("options")), META + '"model" lacks name, num_classes, input_shape (H, W, C) or options'),
    ("train-spawn-other-model", train, ["--epochs=1", "--spawn={good}/run/spawn/epoch_1", "--model=mlp"],
     None, "holds cnn(width=4)"),
    ("train-workdir-is-a-file", train, ["--epochs=1"], _a_file, "--workdir={tmp}/afile is a file, not a directory",
     "{tmp}/afile"),
    ("train-workdir-under-a-file", train, ["--epochs=1"], _a_file,
     "--workdir={tmp}/afile/sub: {tmp}/afile is a file, not a directory", "{tmp}/afile/sub"),
    ("train-finished-run", train, GOOD, None, "{good}/run holds a finished run; pass --overwrite",
     "{good}/run"),
    ("train-unfinished-other-seed", train, GOOD + ["--seed=5"], _unfinished_copy,
     "holds a run with another configuration (differs in: seed)", "{tmp}/unfinished"),
    ("train-locked", train, GOOD, _locked, "{tmp}/locked is in use by process", "{tmp}/locked"),
    ("train-corrupt-run-record", train, GOOD, _corrupt_run_record,
     "corrupt run record {tmp}/badrecord/run.json: expected a JSON dict, got list", "{tmp}/badrecord"),
    ("train-corrupt-resume", train, GOOD, _corrupt_resume,
     "corrupt checkpoint {tmp}/badresume/resume (truncated or damaged files", "{tmp}/badresume"),
    ("train-data-not-prepared", train, ["--dataset=mnist", "--data_dir={tmp}/tfds"], None,
     "data set 'mnist' is not prepared"),
    # evaluate
    ("evaluate-no-checkpoint", evaluate, [], None, "--checkpoint is required"),
    ("evaluate-norm", evaluate, ["--attack_norm=l1"], None, "--attack_norm=l1: value should be one of <linf|l2>"),
    ("evaluate-implementation", evaluate, ["--strong_implementation=torch"], None,
     "--strong_implementation=torch: value should be one of <tf|art>"),
    ("evaluate-unknown-attack", evaluate, [CKPT, "--attack=fgsm"], None, "--attack: unknown attack fgsm"),
    ("evaluate-not-a-checkpoint", evaluate, ["--checkpoint={tmp}"], None,
     "{tmp} is not a tf_ntk checkpoint (no meta.json or ckpt.index)"),
    ("evaluate-truncated-index", evaluate, ["--checkpoint={tmp}/truncated_index"], _truncated_index,
     "corrupt checkpoint {tmp}/truncated_index (truncated or damaged files"),
    ("evaluate-meta-empty-object", evaluate, ["--checkpoint={tmp}/meta"], _meta("{}"), NO_MODEL),
    ("evaluate-meta-model-int", evaluate, ["--checkpoint={tmp}/meta"], _meta('{"model": 3}'),
     META + '"model" is not a JSON object'),
    ("evaluate-meta-no-epoch", evaluate, ["--checkpoint={tmp}/meta"], _meta_edit(_without("epoch")),
     META + 'no "epoch"'),
    ("evaluate-meta-epoch-string", evaluate, ["--checkpoint={tmp}/meta"],
     _meta_edit(lambda m: {**m, "epoch": "one"}), META + '"epoch" is not a number of epochs (got "one")'),
    ("evaluate-meta-data-list", evaluate, ["--checkpoint={tmp}/meta"],
     _meta_edit(lambda m: {**m, "config": {**m["config"], "data": []}}),
     META + '"config" has a "data" that is not a JSON object'),
    ("evaluate-transfer-empty", evaluate, [CKPT, "--transfer_from={tmp}/empty.npz"], _empty_npz,
     "{tmp}/empty.npz is not a tf_ntk adversarial set"),
    ("evaluate-transfer-other-shape", evaluate, [CKPT, "--transfer_from={tmp}/other.npz"], _other_shape_npz,
     "--transfer_from={tmp}/other.npz holds images of shape (4, 4, 1), the model takes (8, 8, 1)"),
    ("evaluate-transfer-nan", evaluate, [CKPT, TRANSFER], _adv_set(_set_item("x_adv", (3, 0, 0, 0), np.nan)),
     "--transfer_from={tmp}/adv.npz: 1 adversarial image is not finite (first: image 3)"),
    ("evaluate-transfer-label-range", evaluate, [CKPT, TRANSFER], _adv_set(_set_item("y", 5, 99)),
     "--transfer_from={tmp}/adv.npz: labels 99 outside the model's 10 classes"),
    ("evaluate-transfer-outside-unit-range", evaluate, [CKPT, TRANSFER], _adv_set(_scaled),
     "--transfer_from={tmp}/adv.npz: 1 adversarial image lies outside [0, 1] (first: image 2"),
    ("evaluate-transfer-outside-eps-ball", evaluate, [CKPT, TRANSFER], _adv_set(_outside_ball),
     "--transfer_from={tmp}/adv.npz: image 4 lies 1 from its clean image in L∞, outside its ε-ball of "
     "0.2 (tolerance 3e-06)"),
    ("evaluate-transfer-no-examples", evaluate, [CKPT, TRANSFER], _adv_set(_no_examples),
     "--transfer_from={tmp}/adv.npz holds 0 examples"),
    ("evaluate-transfer-other-images", evaluate, [CKPT, TRANSFER], _adv_set(_other_images),
     "--transfer_from={tmp}/adv.npz: its clean image 0 is not image 0 of digits/test"),
    ("evaluate-transfer-count", evaluate, [CKPT, TRANSFER], _adv_set(_fewer_indices),
     "--transfer_from={tmp}/adv.npz records (15,) int64 indices for 16 examples"),
    ("evaluate-transfer-other-dataset", evaluate, [CKPT, TRANSFER], _adv_set(_other_dataset),
     "--transfer_from={tmp}/adv.npz perturbs mnist/test; this evaluation reads digits"),
    ("evaluate-transfer-no-eps-record", evaluate, [CKPT, TRANSFER], _adv_set(_no_ball),
     "--transfer_from={tmp}/adv.npz records no ε-ball (norm and eps), so its images cannot be checked"),
    ("evaluate-transfer-previous-format-other-images", evaluate, [CKPT, TRANSFER],
     _adv_set(_previous_format_other_images), "--transfer_from={tmp}/adv.npz: its 16 clean images and "
     "labels are not the first 16 of digits/test (and it records no indices)"),
    ("evaluate-transfer-second-set-nan", evaluate, [CKPT, "--transfer_from={good}/adv.npz,{tmp}/adv.npz"],
     _adv_set(_set_item("x_adv", (3, 0, 0, 0), np.nan)),
     "--transfer_from={tmp}/adv.npz: 1 adversarial image is not finite (first: image 3)"),
    ("evaluate-transfer-empty-name", evaluate, [CKPT, "--transfer_from={good}/adv.npz,"], None,
     "--transfer_from: an empty name in the list of sets"),
    ("evaluate-save-into-a-file", evaluate, [CKPT, "--save_adversarial={tmp}/afile/adv.npz"], _a_file,
     "--save_adversarial: {tmp}/afile is not a directory"),
    ("evaluate-save-not-npz", evaluate, [CKPT, "--save_adversarial={tmp}/adv.txt"], None,
     "--save_adversarial must name a .npz file"),
    ("evaluate-existing-output", evaluate, [CKPT, "--attack=protocol"], None,
     "{good}/run/eval/epoch_1/evaluation.json exists; pass --overwrite", "{good}/run/eval/epoch_1"),
    ("evaluate-output-terms-standard", evaluate, [CKPT, "--output_terms"], None,
     "--output_terms needs a linearized or centered model"),
    # compute_kernel, kernel_dynamics, visualize_features
    ("compute-kernel-no-checkpoint", compute_kernel, [], None, "--checkpoint is required"),
    ("compute-kernel-logit-range", compute_kernel, [CKPT, "--logit=10"], None,
     "--logit=10 out of range for 10 classes"),
    ("compute-kernel-truncated", compute_kernel, ["--checkpoint={tmp}/truncated"], _truncated,
     "corrupt checkpoint {tmp}/truncated (truncated or damaged files"),
    ("compute-kernel-meta-empty", compute_kernel, ["--checkpoint={tmp}/meta"], _meta("{}"), NO_MODEL),
    ("compute-kernel-meta-model-int", compute_kernel, ["--checkpoint={tmp}/meta"], _meta('{"model": 3}'),
     META + '"model" is not a JSON object'),
    ("compute-kernel-meta-no-classes", compute_kernel, ["--checkpoint={tmp}/meta"],
     _meta_edit(_model_without("num_classes")), META + '"model" lacks name, num_classes'),
    ("compute-kernel-meta-no-epoch", compute_kernel, ["--checkpoint={tmp}/meta"], _meta_edit(_without("epoch")),
     META + 'no "epoch"'),
    ("compute-kernel-shards-overwrite", compute_kernel, [CKPT, "--num_shards=2", "--overwrite"], None,
     "--overwrite cannot be combined with --num_shards"),
    ("compute-kernel-shard-range", compute_kernel, [CKPT, "--num_shards=2", "--shard=2"], None,
     "--shard=2 must be below --num_shards=2"),
    ("compute-kernel-workdir-is-a-file", compute_kernel, [CKPT], _a_file,
     "--workdir={tmp}/afile is a file, not a directory", "{tmp}/afile"),
    ("kernel-dynamics-no-spawns", kernel_dynamics, ["--run={tmp}/empty_run"], _no_spawns,
     "no spawn checkpoints in {tmp}/empty_run"),
    ("kernel-dynamics-missing-run", kernel_dynamics, ["--run={tmp}/nowhere"], None, "{tmp}/nowhere"),
    ("kernel-dynamics-meta-empty", kernel_dynamics, ["--run={tmp}/metarun"], _meta_run("{}"), RUN_NO_MODEL),
    ("kernel-dynamics-meta-model-int", kernel_dynamics, ["--run={tmp}/metarun"], _meta_run('{"model": 3}'),
     "corrupt checkpoint record {tmp}/metarun/spawn/epoch_1/meta.json: \"model\" is not a JSON object"),
    ("kernel-dynamics-compare-meta-empty", kernel_dynamics, ["--run={good}/run", "--compare_run={tmp}/metarun"],
     _meta_run("{}"), RUN_NO_MODEL),
    ("kernel-dynamics-compare-meta-no-shape", kernel_dynamics,
     ["--run={good}/run", "--compare_run={tmp}/metarun"], _meta_run('{"epoch": 1, "model": {"name": "cnn"}}'),
     "corrupt checkpoint record {tmp}/metarun/spawn/epoch_1/meta.json: \"model\" lacks name, num_classes"),
    ("visualize-meta-empty", visualize_features, ["--checkpoint={tmp}/meta"], _meta("{}"), NO_MODEL),
    ("visualize-meta-no-epoch", visualize_features, ["--checkpoint={tmp}/meta"],
     _meta_edit(_without("epoch")), META + 'no "epoch"'),
    ("visualize-meta-list", visualize_features, ["--checkpoint={tmp}/meta"], _meta("[]"),
     "expected a JSON dict, got list"),
    ("visualize-logit-range", visualize_features, [CKPT, "--logit=-1"], None, "--logit"),
    ("kernel-machine-no-run", kernel_machine, [], None, "--phase1_run is required"),
    ("kernel-machine-missing-run", kernel_machine, ["--phase1_run={tmp}/nowhere"], None,
     "no spawn checkpoints in {tmp}/nowhere"),
    ("kernel-machine-at-epochs", kernel_machine, ["--phase1_run={good}/run", "--at_epochs=0,7"], None,
     "--at_epochs: no spawn checkpoint at epoch(s) 7 in {good}/run"),
    ("kernel-machine-per-class", kernel_machine, ["--phase1_run={good}/run", "--train_per_class=500"],
     None, "fewer than per_class=500"),
    ("kernel-machine-truncated", kernel_machine, ["--phase1_run={tmp}/brokenrun"], _truncated_run,
     "corrupt checkpoint {tmp}/brokenrun/spawn/epoch_1 (truncated or damaged files"),
    ("kernel-machine-meta-empty", kernel_machine, ["--phase1_run={tmp}/metarun"], _meta_run("{}"),
     RUN_NO_MODEL),
    ("kernel-machine-solver", kernel_machine, ["--phase1_run={good}/run", "--solver=lu"], None,
     "--solver=lu: value should be one of"),
    # results, reproduce
    ("results-corrupt-file", results, ["--root={tmp}/root"], _corrupt_results,
     "skipped corrupt results file {tmp}/root/broken/results.json", None),
    ("results-root-missing", results, ["--root={tmp}/nowhere"], None, "--root={tmp}/nowhere is not a directory", None),
    ("reproduce-preset", reproduce, ["--preset=huge"], None, "--preset=huge: value should be one of"),
    ("reproduce-not-a-sweep", reproduce, ["--preset=smoke"], _not_a_sweep,
     "{tmp}/busy exists and holds no sweep (sweep.json); choose another --workdir", "{tmp}/busy"),
    ("reproduce-spawn-epochs", reproduce, ["--preset=smoke", "--spawn_epochs=a"], None,
     "flag --spawn_epochs=a: 'a' is not numbers separated by commas"),
    ("reproduce-resources-json", reproduce, ["--preset=smoke", "--job_resources={{"], None,
     "--job_resources is not JSON: Expecting property name enclosed in double quotes at character 1"),
    ("reproduce-resources-option", reproduce, ["--preset=smoke", '--job_resources={{"*": {{"gpus": 1}}}}'], None,
     "resources['*']: unknown Ray task option(s) gpus (num_cpus, num_gpus, memory, resources)"),
    ("reproduce-job-strategy", reproduce, ["--preset=smoke", "--job_strategy=multi_worker"], None,
     "--job_strategy=multi_worker: value should be one of"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_left_and_good_data_untouched(case, good, tmp_path, capsys):
    name, module, argv, setup, message, *workdir = case
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if setup is not None:
        setup(good, scratch)
    fill = lambda s: s.format(good=good, tmp=scratch)  # noqa: E731
    workdir = workdir[0] if workdir else "{tmp}/out"
    argv = [fill(a) for a in argv] + ([f"--workdir={fill(workdir)}"] if workdir else [])
    before = _snapshot(good, scratch)
    code, err = helpers.run_app(module, argv, capsys)
    program = module.__name__.rsplit(".", 1)[-1]
    assert code == 2, (name, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"{program}: error: ") and fill(message) in err, err
    assert _snapshot(good, scratch) == before, "files were written, changed or left behind"


@pytest.mark.parametrize("setup", [None, _adv_set(_previous_format)], ids=["genuine", "previous-format"])
def test_a_sound_saved_set_transfers_on_its_own_examples(setup, good, tmp_path, capsys):
    """The good set (16 examples), replayed with --max_examples=4: its transfer accuracy is the
    model's accuracy on its 16 adversarial images; a set of the previous format passes as well."""
    path = good / "adv.npz"
    if setup is not None:
        setup(good, tmp_path)
        path = tmp_path / "adv.npz"
    checkpoint = good / "run" / "spawn" / "epoch_1"
    code, err = helpers.run_app(evaluate, [f"--checkpoint={checkpoint}", f"--transfer_from={path}",
                                           "--attack=protocol", "--attack_steps=1", "--max_examples=4",
                                           f"--workdir={tmp_path}/eval"], capsys)
    assert code in (0, None), err
    results = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    saved = evaluation.load_adversarial(path)
    model, _ = dynamics.load_model(str(checkpoint))
    want = np.mean(np.argmax(model(saved["x_adv"], training=False).numpy(), -1) == saved["y"])
    assert results["transfer_examples"] == 16 and results["examples"] == 4
    assert results["transfer_accuracy"] == pytest.approx(want)


def test_there_are_at_least_30_cases_over_every_binary():
    assert len(CASES) >= 30
    assert {c[1] for c in CASES} == {train, evaluate, compute_kernel, kernel_dynamics, kernel_machine,
                                     visualize_features, results, reproduce}


def test_results_lists_the_readable_runs_before_naming_the_corrupt_file(good, tmp_path, capsys):
    _corrupt_results(good, tmp_path)
    code, err, out = helpers.run_app(results, [f"--root={tmp_path}/root"], capsys, stdout=True)
    assert code == 2 and f"{tmp_path}/root/broken/results.json" in err
    listed = [line.split()[0] for line in out.split("\n\n")[0].splitlines()[2:]]
    assert listed == ["ok"]


def _tmpfs_allowed():
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True, check=False) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


def test_a_full_disk_is_one_line_loses_nothing_and_the_rerun_finishes_bit_identical(good, tmp_path):
    """Training onto a nearly full tmpfs: a checkpoint does not fit. One line naming the file, exit 2,
    another run on that disk byte-identical; once space is freed the same command finishes, with the
    weights of an uninterrupted run."""
    if not _tmpfs_allowed():
        pytest.skip("this machine does not allow mounting a tmpfs in a user namespace "
                    "(unshare --user --map-root-user --mount)")
    disk = tmp_path / "disk"
    disk.mkdir()
    argv = TINY + ["--epochs=3", "--save_epochs=0,1,2,3", "--eval_every=0"]
    command = f"{sys.executable} -m binaries.train --workdir={disk}/new {' '.join(argv)}"
    hashes = f"cd {disk}/good && find . -type f | sort | xargs sha256sum"
    script = f"""
mount -t tmpfs -o size=400k tmpfs {disk} || exit 99
cp -r {good}/run {disk}/good
dd if=/dev/zero of={disk}/filler bs=1k count=100000 2>/dev/null
truncate -s -100k {disk}/filler
before=$({hashes})
{command} >/dev/null 2>{tmp_path}/stderr.txt
echo "exit=$?"
[ "$before" = "$({hashes})" ] && echo "good: same" || echo "good: changed"
rm {disk}/filler
{command} >/dev/null 2>{tmp_path}/stderr2.txt
echo "rerun=$?"
cp -r {disk}/new/spawn/epoch_3 {tmp_path}/final
"""
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                          text=True, timeout=300, check=False)
    err = (tmp_path / "stderr.txt").read_text()
    assert "exit=2" in proc.stdout.splitlines(), (proc.stdout, proc.stderr, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("train: error: cannot write ") and f"{disk}/new" in err, err
    assert err.strip().endswith("No space left on device"), err
    assert "good: same" in proc.stdout.splitlines(), proc.stdout
    assert "rerun=0" in proc.stdout.splitlines(), (tmp_path / "stderr2.txt").read_text()
    helpers.run_binary(train, [f"--workdir={tmp_path}/straight"] + argv)
    a = tf.train.load_checkpoint(str(tmp_path / "final" / "ckpt"))
    b = tf.train.load_checkpoint(str(tmp_path / "straight" / "spawn" / "epoch_3" / "ckpt"))
    names = [n for n in a.get_variable_to_shape_map() if "model" in n]
    assert names and all(np.array_equal(a.get_tensor(n), b.get_tensor(n)) for n in names)


def test_a_divergence_keeps_the_checkpoints_written_before_it_bit_identical(tmp_path, capsys):
    """--lr=200 diverges in epoch 2: one line saying what is kept, exit 2; the spawns of epochs 0,
    0.5 and 1 and the resume state after epoch 1 stay, loadable and bit-identical to those of an
    uninterrupted one-epoch run; nothing of epoch 2 is written."""
    base = ["--width=4", "--eps=0.2", "--batch_size=256", "--eval_every=0", "--lr=200"]
    diverged = tmp_path / "diverged"
    code, err = helpers.run_app(train, [f"--workdir={diverged}", "--epochs=3",
                                        "--save_epochs=0,0.5,1,2"] + base, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("train: error: training diverged: non-finite ") and "at epoch 2, step" in err
    assert err.strip().endswith("kept: the spawn checkpoints of epochs 0, 0.5, 1 and the resume state "
                                "after epoch 1, nothing after the last good step was written"), err
    assert sorted(os.listdir(diverged / "spawn")) == ["epoch_0", "epoch_0.5", "epoch_1"]
    assert not (diverged / "results.json").exists() and not (diverged / ".lock").exists()
    assert not [n for n in os.listdir(diverged) if n.startswith(".tmp")]
    assert [r["epoch"] for r in helpers.read_json(diverged / "history.json")] == [1]
    reference = tmp_path / "reference"
    helpers.run_binary(train, [f"--workdir={reference}", "--epochs=1", "--save_epochs=0,0.5,1"] + base)
    for name in ("spawn/epoch_0", "spawn/epoch_0.5", "spawn/epoch_1", "resume"):
        got = checkpoints.read_tensors(str(diverged / name))
        want = checkpoints.read_tensors(str(reference / name))
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want), name
    model, meta = dynamics.load_model(str(diverged / "spawn" / "epoch_1"))
    assert meta["epoch"] == 1.0 and all(np.isfinite(w).all() for w in model.get_weights())


@pytest.mark.parametrize("saves,kept", [("", None), ("0,0.25,0.5", "0, 0.25, 0.5")],
                         ids=["no-spawn", "spawns"])
def test_a_divergence_in_the_first_epoch_keeps_its_spawns_or_nothing_and_says_so(saves, kept, tmp_path,
                                                                                 capsys):
    """--lr=1000 diverges at the end of epoch 1, before any resume state: the spawns written before
    it stay (the directory with them), a rerun replays and stops the same way without touching them;
    with no spawn, nothing is kept and the directory is gone."""
    workdir = tmp_path / "diverged"
    argv = [f"--workdir={workdir}", "--lr=1000", "--epochs=2", f"--save_epochs={saves}",
            "--eval_every=0", "--width=4", "--batch_size=256"]
    code, err = helpers.run_app(train, argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "at epoch 1, step" in err, err
    if kept is None:
        assert err.strip().endswith("no checkpoint had been written, so nothing is kept"), err
        assert not workdir.exists()
        return
    assert err.strip().endswith(f"kept: the spawn checkpoints of epochs {kept}, nothing after the "
                                "last good step was written"), err
    spawns = workdir / "spawn"
    assert sorted(os.listdir(spawns)) == [f"epoch_{e}" for e in kept.split(", ")]
    for name in os.listdir(spawns):
        model, _ = dynamics.load_model(str(spawns / name))
        assert all(np.isfinite(w).all() for w in model.get_weights())
    before = _snapshot(spawns)
    assert helpers.run_app(train, argv, capsys) == (code, err)
    assert _snapshot(spawns) == before


def _catches(pid, signum):
    """Whether process ``pid`` has a handler for ``signum`` (its SigCgt mask in /proc)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (signum - 1) & 1)


@pytest.mark.parametrize("signum,delay", [(signal.SIGINT, 0.0), (signal.SIGTERM, 0.0),
                                          (signal.SIGINT, 1.0), (signal.SIGTERM, 1.5)],
                         ids=["int-at-once", "term-at-once", "int-during-import", "term-during-import"])
def test_a_signal_while_a_command_starts_is_one_line(signum, delay, tmp_path):
    """From the moment tf_ntk.cli is imported (before TensorFlow), SIGINT and SIGTERM end the
    command with one line and exit 128 + the signal, and nothing is written."""
    proc = subprocess.Popen([sys.executable, "-m", "binaries.train", f"--workdir={tmp_path}/run"],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not _catches(proc.pid, signal.SIGTERM) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)  # Python catches SIGINT from its start; SIGTERM once tf_ntk.cli is imported
    time.sleep(delay)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    name = signal.Signals(signum).name
    assert err.startswith(f"train: interrupted by {name}"), err
    if "while starting" in err:
        assert err.strip() == f"train: interrupted by {name} while starting; nothing was written"
        assert not (tmp_path / "run").exists()


def test_the_start_up_guard_knows_the_commands_and_nothing_else():
    assert startup.command_name(["python", "-m", "binaries.train", "--epochs=1"]) == "train"
    assert startup.command_name(["python", "-m", "tf_ntk.cli.evaluate"]) == "evaluate"
    assert startup.command_name(["/v/bin/python", "/v/bin/tf-ntk-kernel-dynamics", "--run=x"]) == \
        "tf-ntk-kernel-dynamics"
    assert startup.command_name(["/v/bin/tf-ntk-train"]) == "tf-ntk-train"
    for other in (["python", "-m", "pytest", "tests"], ["python", "-c", "import tf_ntk.cli"],
                  ["python", "script.py", "tf-ntk-train"], ["python", "-m", "bench.soak"]):
        assert startup.command_name(other) is None, other


def test_more_eigen_images_than_probe_examples_computes_announces_and_records_what_it_can(good, tmp_path, capsys):
    """--num_eigen=50 on 10 probe examples (a 10 x 10 kernel): 10 eigenvectors, said and recorded."""
    code, err, out = helpers.run_app(visualize_features, [
        "--checkpoint=" + str(good / "run" / "spawn" / "epoch_1"), f"--workdir={tmp_path}/features",
        "--per_class=1", "--num_eigen=50", "--feature_steps=1"], capsys, stdout=True)
    assert not code, err
    assert ("10 examples, 10 eigenvectors ± (--num_eigen=50, but the kernel of 10 probe examples has 10: "
            "more --per_class gives more)") in out, out
    assert helpers.read_json(tmp_path / "features" / "flags.json")["num_eigen"] == 10
    saved = np.load(tmp_path / "features" / "eigen_images.npz")
    assert len(saved["names"]) == 2 * 10 + 1  # eig0± … eig9±, and w
