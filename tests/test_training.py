"""Training: loss falls, adversarial training buys robustness, the spawn schedule, phase 2 from a
spawn, bit-exact resume, MirroredStrategy = one device, one XLA trace, online kernels, the
initialisation seed apart from the data seed."""

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
import tf_ntk
from tf_ntk import checkpoints
from tf_ntk import data
from tf_ntk import dynamics
from tf_ntk import models
from tf_ntk import rundir
from tf_ntk import training
from tf_ntk.robust import attacks
from tf_ntk.robust import evaluation

# ε calibrated for digits (8x8, pixels in [0, 1]): at ε = 0.2 a standard CNN is clearly
# non-robust (PGD-20 robust accuracy ≈ 0.00 after 5 epochs, benign 0.98) while PGD training
# reaches ≈ 0.45 robust accuracy. (At the protocol's 4/255 digits is robust without training.)
DIGITS_EPS = 0.2
NO_STOP = tf.constant(0.0)  # the steps' stop-request input: nobody asks to stop


def _digits(batch_size=64, seed=0):
    return lambda epoch: data.load("digits", "train", batch_size=batch_size, shuffle=True,
                                   seed=seed, epoch=epoch)


def _run(workdir, *, model="cnn", width=8, epochs=3, batch_size=64, callbacks=(), strategy=None,
         kernel_tracker=None, stop_requested=None, init_seed=None, order_seed=None, **overrides):
    """Trains a fresh model initialised by ``seed`` (or ``init_seed``) on digits shuffled by the
    config's data seed (or ``order_seed``), as tf-ntk-train does."""
    training.set_seed(overrides.get("seed", 0) if init_seed is None else init_seed)
    spec = models.spec(model, 10, (8, 8, 1), width=width)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        net = models.build(spec)
    config = training.TrainConfig.phase1(epochs=epochs, batch_size=batch_size, model=spec,
                                         **{"save_epochs": (), **overrides})
    order = config.effective_data_seed if order_seed is None else order_seed
    history = training.train(net, _digits(batch_size, order), config, str(workdir),
                             strategy=strategy, callbacks=callbacks, kernel_tracker=kernel_tracker,
                             stop_requested=stop_requested)
    return net, history


def _weights(model):
    return [v.numpy() for v in model.variables]


def test_loss_falls_and_seed_determines_the_weights(tmp_path):
    model_a, history = _run(tmp_path / "a", seed=1)
    losses = [row["loss"] for row in history]
    assert losses[0] > losses[1] > losses[2] and losses[-1] < 0.5 * losses[0]
    assert losses[0] < np.log(10) + 0.1  # starts near chance, not diverging
    model_b, _ = _run(tmp_path / "b", seed=1)
    for a, b in zip(_weights(model_a), _weights(model_b)):
        np.testing.assert_array_equal(a, b)


def test_adversarial_training_buys_robustness_at_the_calibrated_eps(tmp_path):
    test = data.load("digits", "test", batch_size=360)
    attack = attacks.PGDConfig(eps=DIGITS_EPS, steps=5)
    robust = {}
    for mode, adv_mode in (("clean", "madry"), ("adv", "madry"), ("adv", "clean_then_adv")):
        model, history = _run(tmp_path / f"{mode}-{adv_mode}", epochs=5, data_mode=mode,
                              adv_mode=adv_mode, attack=attack)
        assert history[-1]["loss"] < history[0]["loss"]
        assert all(row["adversarial"] == (mode == "adv") for row in history)
        robust[mode, adv_mode] = evaluation.robust_accuracy(
            evaluation.inference_fn(model), test, attacks.PGDConfig(eps=DIGITS_EPS, steps=20))
    assert robust["clean", "madry"] < 0.1
    assert robust["adv", "madry"] > robust["clean", "madry"] + 0.25
    assert robust["adv", "clean_then_adv"] > robust["clean", "madry"] + 0.25


def test_schedule_and_data_modes():
    config = training.TrainConfig.phase1()
    assert [config.lr_at(e) for e in (0, 99, 100, 149, 150)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001])
    phase2 = training.TrainConfig.phase2()
    assert phase2.epochs == 100 and phase2.lr_at(0) == phase2.lr_at(99) == 0.01
    flip = training.TrainConfig(data_mode="flip")
    assert [flip.adversarial_at(e) for e in (0, 49, 50, 100)] == [False, False, True, True]
    assert config.attack.eps == pytest.approx(4 / 255) and config.attack.steps == 20
    assert config.attack.resolved_step_size == pytest.approx(2 * (4 / 255) / 20)
    # Whole epochs 0…101 (the protocol uses 0…100; the final weights are kept too) and the fractions.
    want = sorted(set(range(102)) | {0.125, 0.25, 0.375, 0.5, 0.75, 1.5, 2.5})
    assert list(config.spawn_epochs()) == want
    # 12 steps per epoch: a fraction is taken at the first step crossing it.
    assert [training.batches_before(e, 12) for e in (0, 0.125, 0.25, 0.375, 0.5, 0.75, 1, 1.5, 2.5)] \
        == [0, 2, 3, 5, 6, 9, 12, 18, 30]
    with pytest.raises(ValueError, match="unknown data_mode 'dirty'"):
        training.TrainConfig(data_mode="dirty")
    with pytest.raises(ValueError, match="outside"):
        training.TrainConfig(epochs=2, save_epochs=(3,))
    assert training.TrainConfig.from_dict(config.to_dict()) == config


def test_spawn_checkpoints_land_at_the_expected_epochs_and_steps(tmp_path):
    seen = []

    class Record(training.Callback):
        def on_checkpoint(self, epoch, path):
            seen.append(epoch)

    # digits: 1437 examples, batch 128 → 12 steps per epoch; flip → adversarial from epoch 1.
    _run(tmp_path, epochs=3, batch_size=128, data_mode="flip", flip_epoch=1, save_epochs=None,
         attack=attacks.PGDConfig(eps=0.1, steps=2), callbacks=[Record()])
    spawns = checkpoints.list_spawns(tmp_path)
    want = [0, 0.125, 0.25, 0.375, 0.5, 0.75, 1, 1.5, 2, 2.5, 3]
    assert [e for e, _ in spawns] == want and seen == want
    steps = [checkpoints.read_meta(p)["step"] for _, p in spawns]
    assert steps == [0, 2, 3, 5, 6, 9, 12, 18, 24, 30, 36]
    meta = checkpoints.read_meta(spawns[1][1])
    assert meta["epoch"] == 0.125 and meta["config"]["data_mode"] == "flip"
    assert meta["model"]["name"] == "cnn" and meta["steps_per_epoch"] == 12
    # The final spawn holds the final weights; epoch 0 holds the initialisation.
    final, _ = dynamics.load_model(spawns[-1][1])
    init, _ = dynamics.load_model(spawns[0][1])
    training.set_seed(0)
    fresh = models.build(meta["model"])
    for a, b in zip(_weights(init), _weights(fresh)):
        np.testing.assert_array_equal(a, b)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(_weights(final), _weights(init)))
    history = checkpoints.read_meta(os.path.join(tmp_path, "resume"))["history"]
    assert [row["adversarial"] for row in history] == [False, True, True]


class _Interrupt(training.Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_batch_end(self, step, logs):
        if step == self.at_step:
            raise KeyboardInterrupt


def test_resume_after_an_interruption_reproduces_the_run_bit_for_bit(tmp_path):
    kw = dict(model="mlp", width=16, epochs=3, data_mode="flip", flip_epoch=1,
              attack=attacks.PGDConfig(eps=0.1, steps=3), save_epochs=None, seed=3)
    straight, history = _run(tmp_path / "straight", **kw)
    with pytest.raises(KeyboardInterrupt):  # killed mid-epoch 2 (adversarial), after a fraction
        _run(tmp_path / "resumed", callbacks=[_Interrupt(at_step=23 + 20)], **kw)
    resumed, history2 = _run(tmp_path / "resumed", **kw)
    for a, b in zip(_weights(straight), _weights(resumed)):
        np.testing.assert_array_equal(a, b)
    assert [r["loss"] for r in history] == [r["loss"] for r in history2]
    # A finished run is returned as is; another configuration in the same workdir is refused.
    again, history3 = _run(tmp_path / "resumed", **kw)
    assert history3 == history2
    with pytest.raises(training.RunConfigMismatchError, match="differs in: lr"):
        _run(tmp_path / "resumed", lr=0.05, **kw)


def test_a_requested_stop_checkpoints_mid_epoch_and_resumes_bit_for_bit(tmp_path):
    """A stop requested at step 23 + 5 (mid epoch 2, adversarial; 23 steps per epoch) writes the
    resume checkpoint at that very step; the rerun replays none of the epoch's first 5 steps and
    ends with the weights, spawns and history of the run never stopped."""
    kw = dict(model="mlp", width=16, epochs=3, data_mode="flip", flip_epoch=1, seed=3,
              attack=attacks.PGDConfig(eps=0.1, steps=3), save_epochs=(0, 1.5, 3))
    straight, history = _run(tmp_path / "straight", **kw)
    steps = []

    class Count(training.Callback):
        def on_batch_end(self, step, logs):
            steps.append(step)

    with pytest.raises(training.StopRequested, match="stopped at epoch 2, step 28"):
        _run(tmp_path / "stopped", stop_requested=lambda: len(steps) >= 28, callbacks=[Count()], **kw)
    meta = checkpoints.read_meta(str(tmp_path / "stopped" / "resume"))
    assert meta["partial"]["epoch"] == 1 and meta["partial"]["batches"] == 5
    steps.clear()
    resumed, history2 = _run(tmp_path / "stopped", callbacks=[Count()], **kw)
    assert steps[0] == 29 and steps[-1] == 69  # resumed at the next step, not at the epoch's start
    for a, b in zip(_weights(straight), _weights(resumed)):
        np.testing.assert_array_equal(a, b)
    assert [r["loss"] for r in history] == [r["loss"] for r in history2]
    for e in (1.5, 3):
        x = tf.train.load_checkpoint(os.path.join(checkpoints.spawn_path(str(tmp_path / "straight"), e), "ckpt"))
        y = tf.train.load_checkpoint(os.path.join(checkpoints.spawn_path(str(tmp_path / "stopped"), e), "ckpt"))
        for name in x.get_variable_to_shape_map():
            np.testing.assert_array_equal(x.get_tensor(name), y.get_tensor(name))


def test_mirrored_strategy_matches_one_device(tmp_path):
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) == 2
    strategy = tf.distribute.MirroredStrategy([d.name for d in cpus])
    single, h1 = _run(tmp_path / "one", model="mlp", width=32, epochs=2)
    mirrored, h2 = _run(tmp_path / "two", model="mlp", width=32, epochs=2, strategy=strategy)
    for a, b in zip(_weights(single), _weights(mirrored)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([r["loss"] for r in h1], [r["loss"] for r in h2], rtol=1e-5)


def test_training_pgd_under_mirrored_strategy_equals_one_device_attack_of_the_global_batch():
    """The adversarial examples training makes on two replicas (TrainSteps.adversarial_examples: the
    batch_slice path, each shard's starts taken at its global rows) equal an independent one-device
    attack of the whole batch with the same seed."""
    cpus = tf.config.list_logical_devices("CPU")
    strategy = tf.distribute.MirroredStrategy([d.name for d in cpus])
    training.set_seed(0)
    spec = models.spec("cnn", 10, (8, 8, 1), width=4)
    with strategy.scope():
        model = models.build(spec)
        optimizer = keras.optimizers.SGD(0.1)
    config = training.TrainConfig.phase1(model=spec, data_mode="adv",
                                         attack=attacks.PGDConfig(eps=0.1, steps=3))
    steps = training.TrainSteps(model, optimizer, config, strategy)
    x, y = data.load_arrays("digits", "test")
    x, y = x[:30], y[:30]  # 15 rows per replica
    seed = tf.constant([5, 7], tf.int64)
    dist = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(30))

    @tf.function
    def run(batch):
        return strategy.run(steps.adversarial_examples, args=(*batch, seed))

    shards = strategy.experimental_local_results(run(next(iter(dist))))
    assert [len(s) for s in shards] == [15, 15]
    want = config.attack.attack(evaluation.inference_fn(model), tf.constant(x), tf.constant(y), seed=seed)
    np.testing.assert_allclose(np.concatenate([s.numpy() for s in shards]), want.numpy(), atol=1e-6)
    assert np.abs(want.numpy() - x).max() > 0.05  # the attack moved the images

@pytest.mark.parametrize("kind", ["standard", "linearized", "centered"])
def test_step_functions_compile_under_xla_and_trace_once(kind):
    """The TPU path: every dynamics' clean and adversarial steps (gradients, PGD, update) compile
    with jit_compile=True on static shapes and trace once over several batches."""
    training.set_seed(0)
    spec = models.spec("cnn", 10, (8, 8, 1), width=4)
    net = models.build(spec)
    model = net if kind == "standard" else tf_ntk.linearize(net, centered=kind == "centered")
    preset = training.TrainConfig.phase1 if kind == "standard" else training.TrainConfig.phase2
    config = preset(epochs=1, batch_size=64, data_mode="adv", jit_compile=True, dynamics=kind,
                    attack=attacks.PGDConfig(eps=0.1, steps=2), model=spec, lr=0.05)
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    steps = training.TrainSteps(model, optimizer, config, tf.distribute.get_strategy())
    adversarial, clean = steps.make(adversarial=True), steps.make(adversarial=False)
    ds = data.load("digits", "train", batch_size=64, drop_remainder=True)
    before = [v.numpy() for v in model.trainable_variables]
    losses = []
    for i, batch in enumerate(ds.take(4)):
        loss, *_ = adversarial(batch, tf.constant([0, i], tf.int64), NO_STOP)
        clean(batch, tf.constant([0, i], tf.int64), NO_STOP)
        losses.append(float(loss))
    counts = [f.experimental_get_tracing_count() for f in (steps.grads, steps.attack, adversarial, clean)]
    assert counts == [1, 1, 1, 1]
    assert np.isfinite(losses).all()
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables))


def test_phase2_from_a_spawn_checkpoint(tmp_path):
    net, _ = _run(tmp_path / "p1", epochs=1, save_epochs=(0.5, 1))
    path = checkpoints.spawn_path(tmp_path / "p1", 0.5)
    meta = checkpoints.read_meta(path)
    # A checkpoint that does not fit the chosen model is a clear error.
    other = models.spec("cnn", 10, (8, 8, 1), width=16)
    with pytest.raises(checkpoints.CheckpointError, match=r"holds cnn\(width=8\).*not cnn\(width=16\)"):
        dynamics.load_model(path, expected_model=other)
    with pytest.raises(checkpoints.CheckpointError, match="does not fit this model"):
        checkpoints.restore(path, model=models.build(other))
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint at"):
        dynamics.load_model(str(tmp_path / "nope"))
    cen, _ = dynamics.load_model(path, dynamics="centered", expected_model=meta["model"])
    x = data.load_arrays("digits", "test")[0][:16]
    np.testing.assert_array_equal(cen(x).numpy(), np.zeros((16, 10), np.float32))
    spawn_net, _ = dynamics.load_model(path)
    config = training.TrainConfig.phase2(epochs=2, batch_size=64, dynamics="centered", spawn=path,
                                         model=meta["model"], save_epochs=(0, 2))
    history = training.train(cen, _digits(), config, str(tmp_path / "p2"))
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(row["lr"] == 0.01 for row in history)
    # The phase-2 checkpoint rebuilds the centered model with its trained θ, kernel still the spawn's.
    loaded, meta2 = dynamics.load_model(checkpoints.spawn_path(tmp_path / "p2", 2))
    assert meta2["config"]["dynamics"] == "centered" and isinstance(loaded, tf_ntk.dynamics.LinearizedModel)
    np.testing.assert_allclose(loaded(x).numpy(), cen(x).numpy(), rtol=1e-5, atol=1e-6)
    k_spawn = tf_ntk.empirical_ntk(spawn_net, x[:6])
    assert helpers.relative_error(tf_ntk.empirical_ntk(loaded, x[:6]), k_spawn) < 1e-5
    with pytest.raises(checkpoints.CheckpointError, match="trained with centered dynamics"):
        dynamics.load_model(checkpoints.spawn_path(tmp_path / "p2", 2), dynamics="linearized")


def test_kernel_tracker_hands_the_probe_kernel_of_each_checkpoint(tmp_path):
    probe, _ = data.class_balanced_sample(*data.load_arrays("digits", "train"), 1)
    kernels = {}

    class Record(training.Callback):
        def on_kernel(self, epoch, kernel):
            kernels[epoch] = kernel.numpy()

    tracker = training.KernelTracker(probe, every=2, at_spawns=True)
    _run(tmp_path, epochs=2, width=4, save_epochs=(0.5, 1), kernel_tracker=tracker,
         callbacks=[Record()])
    assert sorted(kernels) == [0.0, 0.5, 1.0, 2.0]  # every 2 epochs (0, 2) and the spawns
    for epoch in (0.5, 1.0):
        model, _ = dynamics.load_model(checkpoints.spawn_path(tmp_path, epoch))
        want = tf_ntk.empirical_ntk(model, probe, implementation="jacobian").numpy()
        assert kernels[epoch].shape == (10, 10)
        assert helpers.relative_error(kernels[epoch], want) < 1e-5
    assert helpers.relative_error(kernels[0.5], kernels[1.0]) > 1e-3  # the kernel moved


def test_short_epochs_keep_every_fractional_spawn(tmp_path):
    # batch 512 → 3 steps per epoch: 0.125 and 0.25 both land on step 1, 0.375 and 0.5 on step 2.
    _run(tmp_path, model="mlp", width=8, epochs=1, batch_size=512, save_epochs=None)
    spawns = checkpoints.list_spawns(tmp_path)
    assert [e for e, _ in spawns] == [0, 0.125, 0.25, 0.375, 0.5, 0.75, 1]
    assert [checkpoints.read_meta(p)["step"] for _, p in spawns] == [0, 1, 1, 2, 2, 3, 3]


def test_mirrored_adversarial_training_matches_one_device(tmp_path):
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    kw = dict(model="mlp", width=32, epochs=1, data_mode="adv", adv_mode="clean_then_adv",
              attack=attacks.PGDConfig(eps=0.1, steps=3))
    single, h1 = _run(tmp_path / "one", **kw)
    mirrored, h2 = _run(tmp_path / "two", strategy=strategy, **kw)
    for a, b in zip(_weights(single), _weights(mirrored)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h1[0]["loss"], h2[0]["loss"], rtol=1e-5)


def test_loss_is_the_mean_over_the_actual_batch():
    training.set_seed(0)
    spec = models.spec("mlp", 10, (8, 8, 1), width=8)
    net = models.build(spec)
    x, y = data.load_arrays("digits", "train")
    x, y = x[:29], y[:29]
    before = [v.numpy() for v in net.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(attacks.cross_entropy_loss(y, net(x, training=True)))
    want = [b - 0.5 * g.numpy() for b, g in zip(before, tape.gradient(loss, net.trainable_variables))]
    config = training.TrainConfig(batch_size=128, momentum=0.0, model=spec)
    steps = training.TrainSteps(net, keras.optimizers.SGD(0.5), config, tf.distribute.get_strategy())
    steps.make(adversarial=False)((tf.constant(x), tf.constant(y)), tf.constant([0, 0], tf.int64), NO_STOP)
    for got, w in zip(net.trainable_variables, want):
        np.testing.assert_allclose(got.numpy(), w, rtol=1e-5, atol=1e-6)


def test_a_workdir_never_mixes_two_runs_and_dynamics_must_match(tmp_path):
    with pytest.raises(KeyboardInterrupt):  # killed in epoch 0, before any resume checkpoint
        _run(tmp_path, model="mlp", width=8, epochs=1, save_epochs=(0.25,), seed=1,
             callbacks=[_Interrupt(at_step=7)])
    assert [e for e, _ in checkpoints.list_spawns(tmp_path)] == [0.25]
    with pytest.raises(training.RunConfigMismatchError, match="differs in: seed"):
        _run(tmp_path, model="mlp", width=8, epochs=1, save_epochs=(0.25,), seed=2)
    spec = models.spec("mlp", 10, (8, 8, 1), width=8)
    lin = tf_ntk.linearize(models.build(spec), centered=True)
    for kind, message in (("linearized", "the model is centered"),
                          ("standard", "is a tf_ntk.linearize model")):
        with pytest.raises(ValueError, match=message):
            training.train(lin, _digits(), training.TrainConfig.phase2(dynamics=kind, model=spec),
                           str(tmp_path / kind))
    with pytest.raises(ValueError, match="needs a tf_ntk.linearize model"):
        training.train(models.build(spec), _digits(),
                       training.TrainConfig.phase2(dynamics="centered", model=spec), str(tmp_path / "c"))


def test_checkpoint_writes_are_atomic_and_recover_from_a_crash_between_renames(tmp_path):
    net = models.get("mlp", 10, (8, 8, 1), width=4)
    path = str(tmp_path / "resume")
    checkpoints.write(path, {"n": 1}, model=net)
    checkpoints.write(path, {"n": 2}, model=net)  # replaces
    assert checkpoints.read_meta(path) == {"n": 2}
    assert sorted(os.listdir(tmp_path)) == ["resume"]  # no temporary or old copies left
    # A writer killed between its two renames leaves only the hidden old copy: readers restore it.
    os.replace(path, str(tmp_path / ".old-resume-abc"))
    assert checkpoints.exists(path) and checkpoints.read_meta(path) == {"n": 2}
    checkpoints.restore(path, model=models.get("mlp", 10, (8, 8, 1), width=4))


# The seeds: `seed` initialises, `data_seed` (default: `seed`) orders the data and starts PGD.
SEED_RUN = dict(model="mlp", width=8, epochs=1, batch_size=128)  # 12 steps


def _spawn_weights(workdir, epoch):
    reader = tf.train.load_checkpoint(os.path.join(checkpoints.spawn_path(str(workdir), epoch), "ckpt"))
    names = sorted(n for n in reader.get_variable_to_shape_map() if "model" in n)
    assert names
    return [reader.get_tensor(n) for n in names]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _first_labels(workdir):
    """The labels of the first batch the run recorded in ``workdir`` trains on: digits shuffled by
    its recorded configuration's data seed, as `_run` (and tf-ntk-train) loads them."""
    config = training.TrainConfig.from_dict(rundir.read_record(str(workdir))["config"])
    return next(iter(_digits(config.batch_size, config.effective_data_seed)(0)))[1].numpy()


def test_data_seed_none_is_the_seed_bit_for_bit(tmp_path):
    kw = dict(SEED_RUN, data_mode="adv", adv_mode="madry", attack=attacks.PGDConfig(eps=0.1, steps=2),
              seed=2)
    default, h1 = _run(tmp_path / "none", **kw)
    explicit, h2 = _run(tmp_path / "two", data_seed=2, **kw)
    assert _same(_weights(default), _weights(explicit))
    assert [r["loss"] for r in h1] == [r["loss"] for r in h2]
    # A config without a data seed records what it recorded before the field existed, and such a
    # record (an old run's) reads back as data_seed None, i.e. the seed.
    config = training.TrainConfig(seed=2)
    assert config.data_seed is None and config.effective_data_seed == 2
    assert "data_seed" not in config.to_dict()
    assert "data_seed" not in rundir.read_record(str(tmp_path / "none"))["config"]
    assert training.TrainConfig.from_dict(config.to_dict()) == config
    other = training.TrainConfig(seed=2, data_seed=np.int64(5))
    assert other.data_seed == 5 and type(other.data_seed) is int and other.effective_data_seed == 5
    assert other.to_dict()["data_seed"] == 5 and training.TrainConfig.from_dict(other.to_dict()) == other
    with pytest.raises(ValueError, match="data_seed must be an integer or None, got 1.5"):
        training.TrainConfig(data_seed=1.5)


def test_seed_initialises_and_data_seed_orders_the_data(tmp_path):
    kw = dict(SEED_RUN, save_epochs=(0, 1))
    a, _ = _run(tmp_path / "a", seed=1, **kw)  # data seed 1
    b, _ = _run(tmp_path / "b", seed=1, data_seed=7, **kw)
    c, _ = _run(tmp_path / "c", seed=4, data_seed=1, **kw)
    # Same seed: the same initialisation (epoch-0 spawn); another data seed: another data order,
    # so (clean data: nothing else differs) other final weights.
    assert _same(_spawn_weights(tmp_path / "a", 0), _spawn_weights(tmp_path / "b", 0))
    assert not np.array_equal(_first_labels(tmp_path / "a"), _first_labels(tmp_path / "b"))
    assert not _same(_weights(a), _weights(b))
    # Another seed, the same data seed: another initialisation, the same data order.
    assert not _same(_spawn_weights(tmp_path / "a", 0), _spawn_weights(tmp_path / "c", 0))
    np.testing.assert_array_equal(_first_labels(tmp_path / "a"), _first_labels(tmp_path / "c"))
    assert _same(_spawn_weights(tmp_path / "b", 1), _weights(b))  # the final spawn is the final weights


def test_training_pgd_starts_follow_the_data_seed_not_the_seed(tmp_path):
    """With the initialisation and the data order held fixed, only the PGD starts depend on the
    config: the same data seed gives the same weights whatever the seed, another one other weights."""
    kw = dict(SEED_RUN, data_mode="adv", adv_mode="madry", attack=attacks.PGDConfig(eps=0.1, steps=2),
              init_seed=0, order_seed=0)
    a, _ = _run(tmp_path / "a", seed=0, data_seed=5, **kw)
    b, _ = _run(tmp_path / "b", seed=9, data_seed=5, **kw)
    c, _ = _run(tmp_path / "c", seed=0, data_seed=6, **kw)
    assert _same(_weights(a), _weights(b))
    assert not _same(_weights(a), _weights(c))


def test_resume_refuses_another_data_seed_and_takes_an_old_record(tmp_path):
    kw = dict(SEED_RUN, epochs=2, seed=1)
    straight, _ = _run(tmp_path / "straight", **kw)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # in epoch 2: the resume state after epoch 1 is there
        _run(run, callbacks=[_Interrupt(at_step=12 + 5)], **kw)
    saved = checkpoints.read_meta(str(run / "resume"))["config"]
    assert "data_seed" not in saved and "data_seed" not in rundir.read_record(str(run))["config"]
    with pytest.raises(training.RunConfigMismatchError) as refused:
        _run(run, data_seed=2, **kw)
    assert str(refused.value) == f"{run} holds a run with another configuration (differs in: data_seed)"
    config = training.TrainConfig.phase1(**{k: v for k, v in kw.items() if k not in ("model", "width")},
                                         model=models.spec("mlp", 10, (8, 8, 1), width=8), save_epochs=())
    training.check_run(str(run), config)  # the run's own configuration
    training.check_run(str(run), dataclasses.replace(config, data_seed=1))  # data_seed = seed: the same
    with pytest.raises(training.RunConfigMismatchError, match=r"\(differs in: data_seed\)$"):
        training.check_run(str(run), dataclasses.replace(config, data_seed=0))
    for changed in (dict(seed=3), dict(seed=3, data_seed=1)):  # another initialisation
        with pytest.raises(training.RunConfigMismatchError, match=r"\(differs in: seed\)$"):
            training.check_run(str(run), dataclasses.replace(config, **changed))
    with pytest.raises(training.RunConfigMismatchError, match=r"\(differs in: data_seed, seed\)$"):
        training.check_run(str(run), dataclasses.replace(config, seed=3, data_seed=3))
    # The record without the field resumes under data_seed = seed and ends as the straight run.
    resumed, _ = _run(run, data_seed=1, **kw)
    assert _same(_weights(straight), _weights(resumed))


def test_a_sweep_worker_reuses_its_models_and_train_steps_with_the_numbers_of_fresh_runs(tmp_path, monkeypatch):
    """Train jobs one after another in one process, as a sweep worker runs them (each in its own
    `reuse_models` block): the second phase-1 and phase-2 jobs train the first ones' model objects (a
    CNN with BatchNorm: its moving statistics too) with the steps traced for them, and every variable
    and recorded number equals the same job run on new objects."""
    from tf_ntk.cli import common  # noqa: PLC0415 - imports the binaries' flags

    tiny = ["--width=3", "--eps=0.2", "--attack_steps=2", "--eval_attack_steps=2", "--batch_size=256",
            "--model=cnn", "--data_mode=adv", "--eval_every=0"]

    def phase1(name, seed):
        return [f"--workdir={tmp_path / name}", f"--seed={seed}", "--epochs=1", "--save_epochs=0.5,1", *tiny]

    def phase2(name, parent):
        return [f"--workdir={tmp_path / name}", f"--spawn={tmp_path / parent / 'spawn' / 'epoch_0.5'}",
                "--dynamics=centered", "--epochs=1", "--save_epochs=1", "--lr=0.01", *tiny]

    def pooled():
        return [m for models_ in dynamics._POOL.free.values() for entry in models_  # noqa: SLF001
                for m in (entry if isinstance(entry, tuple) else (entry,))]

    monkeypatch.setattr(dynamics, "_POOL", dynamics._Pool())  # noqa: SLF001 - this test's own worker
    jobs = [("a", phase1("a", 0)), ("b", phase1("b", 1)), ("ca", phase2("ca", "a")), ("cb", phase2("cb", "b"))]
    for name, args in jobs:  # a worker: every job in its own block (execute's), models kept in between
        assert common.execute("tf_ntk.cli.train", args, str(tmp_path / f"{name}.log")) is None
    # Reuse happened: b trained a's model with the steps traced for a, cb ca's: one model per kind in
    # the pool and one compiled state each, where new objects would leave two.
    compiled = training._COMPILED  # noqa: SLF001 - the cache under test
    kept = [m for m in pooled() if m in compiled]
    assert sorted(m.name for m in kept) == ["centered_cnn_w3", "cnn_w3"]
    assert all(len(compiled[m]) == 1 for m in kept)
    assert "resuming" not in (tmp_path / "b.log").read_text()
    monkeypatch.setattr(dynamics, "_POOL", dynamics._Pool())  # noqa: SLF001 - a new worker: nothing kept
    for name, args in jobs[1::2]:  # b and cb again on new objects
        fresh = [a.replace(f"/{name}", f"/{name}-fresh") if a.startswith("--workdir") else a for a in args]
        assert common.execute("tf_ntk.cli.train", fresh, str(tmp_path / f"{name}-fresh.log")) is None
        for epoch in ("1",) if name == "cb" else ("0.5", "1"):
            got, _ = dynamics.load_model(str(tmp_path / name / "spawn" / f"epoch_{epoch}"))
            want, _ = dynamics.load_model(str(tmp_path / f"{name}-fresh" / "spawn" / f"epoch_{epoch}"))
            for g, w in zip(got.variables, want.variables, strict=True):
                np.testing.assert_array_equal(g.numpy(), w.numpy())
        got = rundir.read_json(str(tmp_path / name / "results.json"))
        want = rundir.read_json(str(tmp_path / f"{name}-fresh" / "results.json"))
        for key in ("benign_accuracy", "robust_accuracy_quick", "final_train_loss"):
            assert got[key] == want[key], key
    assert not set(map(id, pooled())) & set(map(id, kept))  # the second runs had new objects
