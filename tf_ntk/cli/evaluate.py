r"""Benign and robust accuracy of a checkpoint under its dynamics, with a gradient-masking report.

    tf-ntk-evaluate --checkpoint=runs/adv/spawn/epoch_10 --eps=0.2
    tf-ntk-evaluate --checkpoint=runs/std/spawn/epoch_10 --eps=0.2 \
        --save_adversarial=runs/std/adv_eps0.2.npz
    tf-ntk-evaluate --checkpoint=runs/adv/spawn/epoch_10 \
        --transfer_from=runs/std/adv_eps0.2.npz,runs/other/adv_eps0.2.npz

--attack names the attacks, each reported on its own, and the robust accuracy is the worst case per
example over all of them (RobustBench's count: clean and every adversarial image right):

- protocol: the paper's L∞ PGD-100, ε = 4/255 (--eps), step 2ε/100, one random start, CE; the
  --attack_* flags and --restarts change it (--attack_norm=l2 --eps=0.25 --attack_step_size=0.01
  for the L2 attack);
- strong (default with protocol): the ensemble of tf_ntk.robust.ensembles.strong: PGD with CE, CW margin,
  DLR and targeted margins (constant and cosine steps, every iterate counted), APGD-CE and
  APGD-DLR, and Square (compiled TensorFlow loops; ART's with --strong_implementation=art); --eps,
  --attack_norm, --attack_steps, --strong_restarts and --square_queries shape it (--attack_loss,
  --attack_step_size and --restarts do not);
- autoattack: ART's AutoAttack (APGD-CE, APGD-DLR, DeepFool, Square); --eps, --attack_norm,
  --autoattack_restarts and --square_queries shape it; slow on CPUs.

--save_adversarial writes the worst case per example with its record (the eps-ball, the data set,
split and indices of its examples, the number of classes); --transfer_from takes one or more such
sets, comma-separated, checks each against its record, the model and the split before any attack
runs or anything is written, and reports the model's accuracy on each set's own examples.

--sanity_checks adds the report that fails when more steps, restarts, other losses or the black-box
Square attack break more examples; every example one of its attacks broke counts as broken in the
robust accuracy (robust["sanity"]: the report's own worst case). A phase-1 checkpoint can be
evaluated under another dynamics (--eval_dynamics). Results go to --workdir (default
RUN/eval/<checkpoint name>): flags.json, evaluation.json and TensorBoard events. Every attack saves
its progress under <workdir>/partial after each member of an ensemble: an evaluation that was killed
(a preempted machine, a stopped sweep) continues where it stopped when run again, with the same
numbers; the directory goes once evaluation.json is written.

evaluation.json holds, besides the checkpoint, its epoch and dynamics, the number of examples and the
resolved flags:

- "benign_accuracy"; "robust": {attack: {"accuracy", "attack", "description", "breaks",
  "rejected"}}; "robust_accuracy", the worst case per example over the attacks; "attack";
- "per_example": {"benign", "robust", and one per attack}: strings of '0'/'1', one character per
  evaluated example in data order (tf_ntk.robust.evaluation.decode_bits reads them): "benign" the clean
  image classified right (the clean pass the attacks start from, which gives benign_accuracy), each
  attack's name the example still right under that attack (clean image included), "robust" all of
  them at once. Each string's mean is exactly the accuracy recorded for it, for bootstraps over
  examples (and seeds);
- with --transfer_from: "transfer": [{"from" (absolute path), "accuracy", "examples", "correct"
  (a '0'/'1' string over the set's own examples, in its order)}, ...] in the order given; with a
  single set also the earlier keys "transfer_accuracy", "transfer_from" and "transfer_examples";
- with --save_adversarial: "saved_adversarial"; with --sanity_checks: "sanity_checks";
- with --output_terms: "output_terms": {"clean": {"spawn_term", "kernel_term", "sum"},
  "adversarial": {...}} (tf_ntk.robust.evaluation.output_term_accuracies): the accuracies of the argmax of
  the spawn function f_{θ_s}(x) alone, of the kernel term J_{θ_s}(x)(θ − θ_s) alone and of their
  sum, on the clean images and on PGD images of the protocol attack crafted against the model (one
  start per batch, seeded by batch: not the images behind robust["protocol"]). A linearized model's
  output is the sum, a centered model's the kernel term alone.

TensorBoard gets eval/benign_accuracy, eval/robust_accuracy, eval/robust_accuracy_<attack> and, per
--transfer_from set in the order given, eval/transfer_accuracy/<i> (i from 0).
"""

import hashlib
import json
import os

from absl import flags
import numpy as np
import tensorflow as tf

import tf_ntk
from tf_ntk import checkpoints
from tf_ntk import data
from tf_ntk import dynamics
from tf_ntk import rundir
from tf_ntk import summaries
from tf_ntk.cli import common
from tf_ntk.cli import common_flags
from tf_ntk.robust import ensembles
from tf_ntk.robust import evaluation
from tf_ntk.robust import sanity

common_flags.define_data_flags()
common_flags.define_image_flags()
common_flags.define_batch_flag()
common_flags.define_attack_flags()
common_flags.define_seed_flag()
common_flags.define_run_flags()
common_flags.define_checkpoint_flag()
common_flags.define_strong_flags()
flags.DEFINE_enum("eval_dynamics", None, ["standard", "linearized", "centered"],
                  "Evaluate a phase-1 checkpoint under these dynamics (default: the checkpoint's own).")
flags.DEFINE_enum("split", "test", list(data.SPLITS), "Split to evaluate on.")
flags.DEFINE_integer("max_examples", None, "Evaluate on the first N examples only.", lower_bound=1)
flags.DEFINE_list("attack", ["protocol", "strong"], "Attacks to run, comma-separated, from "
                  f"{', '.join(ensembles.NAMES)}; the robust accuracy is the worst case over all.")
flags.DEFINE_integer("autoattack_restarts", 5, "AutoAttack: random starts of APGD and restarts of "
                     "Square (ART's default 5).", lower_bound=1)
flags.DEFINE_bool("sanity_checks", False, "Run the sanity report on the strongest white-box attack "
                  "asked for (several more attacks, and the black-box Square attack).")
flags.DEFINE_integer("blackbox_queries", 1000, "Queries of the sanity report's Square attack "
                     "(0: skip the black-box check).", lower_bound=0)
flags.DEFINE_string("save_adversarial", None, "Save the adversarial set (the worst case per "
                    "example) to this .npz, with its record: the eps-ball (--attack_norm, --eps) "
                    "every image lies in, the data set, split and indices of the examples it "
                    "perturbs, and the number of classes.")
flags.DEFINE_list("transfer_from", None, "Also evaluate on saved adversarial sets (.npz written by "
                  "--save_adversarial, comma-separated): transfer attacks, each reported on its own "
                  "in the order given. Each is checked before any attack runs: finite images in "
                  "[0, 1] inside its recorded eps-ball around its clean images, labels within the "
                  "model's classes, and clean images and labels exactly the images of the split it "
                  "records (of this evaluation's data set) at its indices (sets that record none: "
                  "the first N of --split). A transfer accuracy is on the set's own examples, "
                  "whatever --max_examples says.")
flags.DEFINE_bool("output_terms", False, "For linearized/centered models, save the two output terms "
                  "(spawn function and kernel term) on clean and adversarial (protocol attack) inputs "
                  "to output_terms.npz, and record the accuracy of each term alone and of their sum "
                  "in evaluation.json (\"output_terms\").")

FLAGS = flags.FLAGS
REQUIRED_FLAGS = ("checkpoint",)  # marked required when the binary runs (tf_ntk.cli.common.run)


def attacks_from_flags():
    """{name: attack} in the order --attack lists them."""
    names = list(dict.fromkeys(FLAGS.attack))
    unknown = [n for n in names if n not in ensembles.NAMES]
    if unknown or not names:
        raise ValueError(f"--attack: unknown attack {', '.join(unknown) or '(none)'}; known attacks: "
                         f"{', '.join(ensembles.NAMES)}")
    protocol = common_flags.attack_config(FLAGS, default_steps=100)
    out = {}
    for name in names:
        if name == "protocol":
            out[name] = protocol
        elif name == "strong":
            out[name] = common_flags.strong_ensemble(FLAGS)
        else:
            if FLAGS.eps <= 0:
                raise ValueError("--attack=autoattack needs --eps > 0")
            if FLAGS.square_queries < 1:
                raise ValueError("--attack=autoattack needs --square_queries >= 1 (Square is one of "
                                 "its attacks)")
            out[name] = ensembles.named(name, FLAGS.eps, FLAGS.attack_norm,
                                         apgd_restarts=FLAGS.autoattack_restarts,
                                         square_restarts=FLAGS.autoattack_restarts,
                                         square_queries=FLAGS.square_queries,
                                         batch_size=FLAGS.batch_size)
    return out


def attack_ball(chosen):
    """(norm, eps): the ε-ball every chosen attack keeps its images in, which a saved set records."""
    balls = {(m.norm, float(m.eps)) for a in chosen.values() for m in ensembles.members(a)}
    if len(balls) != 1:
        raise ValueError(f"the attacks use different eps-balls {sorted(balls)}; a saved set records one")
    return balls.pop()


def data_record(opts, split):
    """What a saved set records of the examples it perturbs: {"dataset", "split", "image_size",
    "channels"}."""
    return {"dataset": FLAGS.dataset, "split": split, "image_size": opts.get("image_size"),
            "channels": opts.get("channels")}


def _describe(record):
    """"digits/test (image_size=16)" of a `data_record`-like dict."""
    if not isinstance(record, dict):
        return repr(record)
    options = ", ".join(f"{k}={record.get(k)}" for k in ("image_size", "channels") if record.get(k))
    split = f"/{record.get('split')}" if record.get("split") is not None else ""
    return f"{record.get('dataset')}{split}" + (f" ({options})" if options else "")


def load_transfer(path, num_classes, opts, image_shape):
    """The --transfer_from set at ``path``, checked (`evaluation.check_adversarial_set`) against the
    model's ``num_classes`` and ``image_shape`` (H, W, C) and against the split of this evaluation's
    data set it records (--split for sets that record none). ValueError (one line naming it,
    "--transfer_from=<path>") otherwise."""
    name = f"--transfer_from={path}"
    if not path:
        raise ValueError("--transfer_from: an empty name in the list of sets")
    adv = evaluation.load_adversarial(path, name=name, num_classes=num_classes,
                                      image_shape=image_shape)
    recorded = adv["meta"].get("data")
    split = FLAGS.split
    if recorded is not None:
        split = recorded.get("split") if isinstance(recorded, dict) else None
        mine = data_record(opts, split)
        theirs = {k: recorded.get(k) for k in mine} if isinstance(recorded, dict) else recorded
        if theirs != mine or split not in data.SPLITS:
            raise ValueError(f"{name} perturbs {_describe(theirs)}; this evaluation reads "
                             f"{_describe(dict(mine, split=None))}")
    x_split, y_split = ensembles.arrays(data.load(FLAGS.dataset, split, batch_size=FLAGS.batch_size,
                                                   **opts))
    evaluation.check_adversarial_set(adv, name=name, num_classes=num_classes, image_shape=image_shape,
                                     split=(x_split, y_split), split_name=f"{FLAGS.dataset}/{split}")
    return adv


def _log_into_run(checkpoint, results, meta, own_dynamics):
    """Writes the headline numbers into the evaluated run's own events (RUN for a checkpoint
    RUN/spawn/<name>), at the checkpoint's epoch, so that the run's scalars and its HParams row
    hold them: eval/benign_accuracy, eval/robust_accuracy (the worst case) and one
    eval/robust_accuracy_<attack> per attack. Only an evaluation with the strong ensemble under the
    run's own dynamics counts (a transfer set's protocol-only pass, or a phase-1 checkpoint
    evaluated as a centered model, is not the run's robust accuracy); each (tag, epoch) once."""
    ckpt = rundir.abspath(checkpoint).rstrip("/")
    run = os.path.dirname(os.path.dirname(ckpt))
    if (not own_dynamics or "strong" not in results["robust"]
            or os.path.basename(os.path.dirname(ckpt)) != "spawn"
            or not rundir.exists(os.path.join(run, rundir.RECORD))):
        return
    step = summaries.epoch_step(meta.get("epoch") or 0)
    ledger = summaries.Ledger(run)
    writer = tf.summary.create_file_writer(run)
    with writer.as_default():
        ledger.scalar("eval/benign_accuracy", results["benign_accuracy"], step)
        ledger.scalar("eval/robust_accuracy", results["robust_accuracy"], step)
        for name, r in results["robust"].items():
            ledger.scalar(f"eval/robust_accuracy_{name}", r["accuracy"], step)
    writer.close()


def main(argv):
    del argv
    meta = checkpoints.read_spawn_meta(FLAGS.checkpoint)
    chosen = attacks_from_flags()
    protocol = common_flags.attack_config(FLAGS, default_steps=100)
    if FLAGS.save_adversarial and not FLAGS.save_adversarial.endswith(".npz"):
        raise ValueError(f"--save_adversarial must name a .npz file, got {FLAGS.save_adversarial}")
    if FLAGS.save_adversarial:
        common.check_new_output(FLAGS.save_adversarial, FLAGS.overwrite)
        parent = os.path.dirname(rundir.abspath(FLAGS.save_adversarial))
        inside_run = FLAGS.workdir and parent == rundir.abspath(FLAGS.workdir).rstrip("/")
        if not inside_run and not rundir.isdir(parent):  # the run directory is made below
            raise ValueError(f"--save_adversarial: {parent} is not a directory")
    norm, eps = attack_ball(chosen) if FLAGS.save_adversarial else (None, None)
    _, opts = common.recorded_data(FLAGS, meta)  # the data the checkpoint was trained on
    info = data.info(FLAGS.dataset, image_size=opts["image_size"], channels=opts["channels"])
    common.check_input_shape(f"checkpoint {FLAGS.checkpoint}", meta["model"], info.image_shape,
                             FLAGS.dataset)
    dataset = data.load(FLAGS.dataset, FLAGS.split, batch_size=FLAGS.batch_size, **opts)
    if FLAGS.max_examples:
        dataset = dataset.unbatch().take(FLAGS.max_examples).batch(FLAGS.batch_size)
    num_classes = meta["model"]["num_classes"]
    transfers = [(path, load_transfer(path, num_classes, opts, info.image_shape))
                 for path in FLAGS.transfer_from or []]
    model, _ = dynamics.load_model(FLAGS.checkpoint, dynamics=FLAGS.eval_dynamics, reuse=True)
    centered = getattr(model, "centered", None)
    kind = "standard" if centered is None else ("centered" if centered else "linearized")
    if FLAGS.output_terms and kind == "standard":
        raise ValueError("--output_terms needs a linearized or centered model (--eval_dynamics)")
    workdir = FLAGS.workdir or common.default_workdir(FLAGS.checkpoint, "eval")
    results_path = os.path.join(workdir, rundir.EVALUATION)
    common.check_new_output(results_path, FLAGS.overwrite)
    fn = evaluation.inference_fn(model)
    x, y = ensembles.arrays(dataset)
    # Each attack saves its progress here after every member: a killed evaluation, rerun, continues
    # where it stopped (the key names the attack and inputs; the tag names these weights and dynamics).
    partial = rundir.join(workdir, "partial")
    model_record = json.dumps([kind, meta.get("model"), tf_ntk.__version__], sort_keys=True, default=str)
    tag = hashlib.sha256(model_record.encode() + b"".join(np.asarray(w).tobytes() for w in model.weights))
    resume = {"resume_dir": partial, "resume_tag": tag.hexdigest()}
    with rundir.open_run(workdir, keep_if=lambda _: rundir.exists(partial)):
        if FLAGS.overwrite:
            rundir.rmtree(partial)  # start over
        resolved = common.write_flags(workdir, __name__)
        print(f"{FLAGS.checkpoint} (epoch {meta.get('epoch')}, {kind} dynamics) on "
              f"{FLAGS.dataset}/{FLAGS.split}, {len(y)} examples")
        results = evaluation.evaluation_record(rundir.abspath(FLAGS.checkpoint), meta.get("epoch"), kind,
                                               len(y), resolved)
        outcomes = []
        for name, attack in chosen.items():
            members = getattr(attack, "members", None)
            print(f"attack {name}: " + (attack.describe() if members is None else
                                        f"{len(members)} attacks, worst case per example: "
                                        + ", ".join(m.short() for m in members)))
            bar = common.progress(len(y), unit="image") if name == "protocol" else None
            outcome = ensembles.evaluate(fn, x, y, attack, seed=FLAGS.seed,
                                          batch_size=FLAGS.batch_size, progress=bar, **resume)
            outcomes.append(outcome)
            results["robust"][name] = {"accuracy": outcome.accuracy, "attack": attack.to_dict(),
                                       "description": attack.describe(), "breaks": outcome.breaks(),
                                       "rejected": outcome.rejected}
            if outcome.rejected:
                print(f"warning: {outcome.rejected} images crafted by the {name} attack lay outside "
                      "the eps-ball or [0, 1] or were not finite, and were discarded")
        # Every attack's evaluation starts with the same clean pass; the first one's is the benign
        # outcome, so an example right under the attacks is right on its clean image.
        benign = outcomes[0].clean_correct
        results["benign_accuracy"] = int(np.sum(benign)) / len(benign)
        correct, x_adv = ensembles.worst_case(outcomes)
        results["robust_accuracy"] = float(np.mean(correct))
        results["per_example"] = {"benign": evaluation.encode_bits(benign),
                                  "robust": evaluation.encode_bits(correct),
                                  **{name: evaluation.encode_bits(outcome.correct)
                                     for name, outcome in zip(chosen, outcomes)}}
        results["attack"] = {"name": "+".join(chosen), "eps": FLAGS.eps, "norm": FLAGS.attack_norm}
        if FLAGS.save_adversarial:
            evaluation.save_adversarial(FLAGS.save_adversarial, x, x_adv, y, protocol,
                                        num_classes=num_classes, norm=norm, eps=eps,
                                        data=data_record(opts, FLAGS.split), indices=np.arange(len(y)),
                                        attacks={n: a.to_dict() for n, a in chosen.items()},
                                        checkpoint=results["checkpoint"], dynamics=kind)
            results["saved_adversarial"] = rundir.abspath(FLAGS.save_adversarial)
        if transfers:
            results["transfer"] = []
            for path, transfer in transfers:
                hits = evaluation.transfer_correct(fn, transfer, FLAGS.batch_size)
                results["transfer"].append({"from": rundir.abspath(path),
                                            "accuracy": int(np.sum(hits)) / len(hits),
                                            "examples": len(hits),
                                            "correct": evaluation.encode_bits(hits)})
            if len(transfers) == 1:  # the keys of a single set, as before
                only = results["transfer"][0]
                results.update(transfer_accuracy=only["accuracy"], transfer_from=only["from"],
                               transfer_examples=only["examples"])
        if FLAGS.sanity_checks:
            white = [n for n in ("strong", "protocol") if n in chosen] or ["strong"]
            target = chosen.get(white[0]) or common_flags.strong_ensemble(FLAGS)
            print(f"sanity checks of the {white[0]} attack")
            ran = dict(zip(chosen, outcomes)).get(white[0])  # the same attack, seed and batches
            report = sanity.sanity_checks(fn, x, y, target, seed=FLAGS.seed, batch_size=FLAGS.batch_size,
                                          blackbox_queries=FLAGS.blackbox_queries, base=ran, **resume)
            results["sanity_checks"] = report.to_dict()
            print(report)
            # Its stronger attacks count: an example any of them broke is not robust.
            results["robust"]["sanity"] = {
                "accuracy": report.worst_case, "rejected": 0,
                "description": f"the sanity report's attacks at eps {FLAGS.eps:g}: {white[0]}, "
                               "more steps, more restarts, other losses, Square"}
            correct = correct & report.correct
            results["robust_accuracy"] = float(np.mean(correct))
            results["per_example"].update(robust=evaluation.encode_bits(correct),
                                          sanity=evaluation.encode_bits(report.correct))
            results["attack"]["name"] += "+sanity"
        if FLAGS.output_terms:
            terms = evaluation.output_terms(model, dataset, protocol, seed=FLAGS.seed)
            rundir.write_npz(os.path.join(workdir, rundir.OUTPUT_TERMS), compressed=True, **terms)
            results["output_terms"] = evaluation.output_term_accuracies(terms)
        writer = tf.summary.create_file_writer(workdir)
        with writer.as_default(step=summaries.epoch_step(meta.get("epoch") or 0)):
            tf.summary.scalar("eval/benign_accuracy", results["benign_accuracy"])
            tf.summary.scalar("eval/robust_accuracy", results["robust_accuracy"])
            for name, r in results["robust"].items():
                tf.summary.scalar(f"eval/robust_accuracy_{name}", r["accuracy"])
            for i, t in enumerate(results.get("transfer", [])):
                tf.summary.scalar(f"eval/transfer_accuracy/{i}", t["accuracy"])
            summaries.write_config(resolved)
        writer.flush()
        _log_into_run(FLAGS.checkpoint, results, meta, own_dynamics=FLAGS.eval_dynamics is None)
        rundir.write_json(results_path, results)
        rundir.rmtree(partial)
    print(f"benign accuracy {results['benign_accuracy']:.4f}")
    for name, r in results["robust"].items():
        print(f"robust accuracy {r['accuracy']:.4f}  ({name})")
    if len(results["robust"]) > 1:
        print(f"robust accuracy {results['robust_accuracy']:.4f}  (worst case over "
              f"{', '.join(results['robust'])})")
    for path, t in zip(FLAGS.transfer_from or [], results.get("transfer", [])):
        print(f"transfer accuracy {t['accuracy']:.4f}  (set {path}, {t['examples']} examples)")
    for inputs, accuracies in results.get("output_terms", {}).items():
        print(f"output terms ({inputs}): spawn term {accuracies['spawn_term']:.4f}, kernel term "
              f"{accuracies['kernel_term']:.4f}, sum {accuracies['sum']:.4f}")
    if "sanity_checks" in results:
        failed = [c["name"] for c in results["sanity_checks"]["checks"] if not c["passed"]]
        print("sanity checks " + ("passed" if not failed else "FAILED: " + "; ".join(failed)))
    print(f"results: {results_path}")


def run():
    """The `tf-ntk-evaluate` console command (`python -m binaries.evaluate` in a checkout)."""
    common.command(main)


if __name__ == "__main__":
    run()
