"""A kernel as tiles: three shards run separately, one of them killed and rerun, assemble exactly the
kernel one process computes; that kernel equals the library's; tiles of another kernel are refused."""

import os
import shutil

import numpy as np
import pytest

from tests import helpers
from tf_ntk import data
from tf_ntk import dynamics
from tf_ntk import ntk
from tf_ntk.cli import compute_kernel
from tf_ntk.cli import kernel_dynamics
from tf_ntk.cli import train
from tf_ntk.ntk import kernel_shards

TINY = ["--width=4", "--batch_size=256", "--epochs=1", "--save_epochs=0,0.5,1", "--eval_every=0"]
KERNEL = ["--per_class=2", "--block_size=7", "--kernel_dtype=float64"]  # 20 examples: 3x3 tiles, 6 above


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    helpers.run_binary(train, [f"--workdir={root}/run"] + TINY)
    return f"{root}/run/spawn/epoch_1"


def test_three_shards_with_one_killed_and_rerun_give_the_one_process_kernel(checkpoint, tmp_path, capsys):
    one = tmp_path / "one"
    helpers.run_binary(compute_kernel, [f"--checkpoint={checkpoint}", f"--workdir={one}"] + KERNEL)
    want = np.load(one / "kernel.npz")["kernel"]
    assert not (one / "tiles").exists()  # removed once assembled
    sharded = tmp_path / "sharded"
    argv = [f"--checkpoint={checkpoint}", f"--workdir={sharded}", "--num_shards=3"] + KERNEL
    helpers.run_binary(compute_kernel, argv + ["--shard=0"])
    helpers.run_binary(compute_kernel, argv + ["--shard=1"])
    mine = [t for k, t in enumerate(kernel_shards.tiles(20, 7)) if k % 3 == 1]
    os.remove(kernel_shards.tile_path(sharded / "tiles", *mine[-1]))  # killed before its last tile
    helpers.run_binary(compute_kernel, argv + ["--shard=2"])
    assert not (sharded / "kernel.npz").exists()  # a tile is missing: nothing assembled
    capsys.readouterr()
    helpers.run_binary(compute_kernel, argv + ["--shard=1"])  # the rerun computes only that tile
    printed = capsys.readouterr().out
    assert "1 tile(s) computed, 1 already there" in printed
    np.testing.assert_array_equal(np.load(sharded / "kernel.npz")["kernel"], want)
    assert not (sharded / "tiles").exists() and (sharded / "heat_map.png").exists()
    helpers.run_binary(compute_kernel, argv + ["--shard=0"])  # a late shard: nothing to do
    assert "already assembled" in capsys.readouterr().out


def test_the_tiled_kernel_equals_the_library_kernel_and_other_tiles_are_refused(checkpoint, tmp_path,
                                                                               capsys):
    out = tmp_path / "k"
    helpers.run_binary(compute_kernel, [f"--checkpoint={checkpoint}", f"--workdir={out}"] + KERNEL)
    saved = np.load(out / "kernel.npz")
    model, _ = dynamics.load_model(checkpoint)
    x, _ = data.load_arrays("digits", "train")
    want = ntk.empirical_ntk(model, x[saved["indices"]], dtype="float64").numpy()
    np.testing.assert_allclose(saved["kernel"], want, rtol=1e-10, atol=1e-12)
    # Its blocks spread over two mirrored replicas (the logical CPUs of tests/conftest.py): the same.
    argv = [f"--checkpoint={checkpoint}", f"--workdir={tmp_path}/mirrored", "--strategy=mirrored"] + KERNEL
    helpers.run_binary(compute_kernel, argv)
    np.testing.assert_allclose(np.load(tmp_path / "mirrored" / "kernel.npz")["kernel"], saved["kernel"], rtol=1e-12)
    code, err = helpers.run_app(compute_kernel, argv[:1] + [f"--workdir={tmp_path}/mw", "--strategy=multi_worker"],
                                capsys)
    assert code == 2 and err.count("\n") == 1 and "--strategy=multi_worker is for train" in err
    # Tiles of another kernel (another logit) in the same directory are refused, not mixed.
    argv = [f"--checkpoint={checkpoint}", f"--workdir={tmp_path}/mixed", "--num_shards=2"] + KERNEL
    helpers.run_binary(compute_kernel, argv + ["--shard=0"])
    code, err = helpers.run_app(compute_kernel, argv + ["--shard=1", "--logit=3"], capsys)
    assert code == 2 and "holds tiles of another kernel (differs in: key)" in err
    assert "--overwrite" not in err and f"delete {tmp_path}/mixed/tiles" in err, err  # refused with shards


def test_kernel_dynamics_in_two_shards_equals_one_process(checkpoint, tmp_path, capsys):
    run = os.path.dirname(os.path.dirname(checkpoint))
    argv = [f"--run={run}", "--per_class=2", "--test_per_class=1", "--kernel_dtype=float64"]
    helpers.run_binary(kernel_dynamics, argv + [f"--workdir={tmp_path}/one"])
    want = helpers.read_csv(tmp_path / "one" / "kernel_dynamics.csv")
    sharded = argv + [f"--workdir={tmp_path}/two", "--num_shards=2"]
    capsys.readouterr()
    helpers.run_binary(kernel_dynamics, sharded + ["--shard=0"])
    assert "kernel(s) of other shards missing" in capsys.readouterr().out
    assert not (tmp_path / "two" / "kernel_dynamics.csv").exists()
    helpers.run_binary(kernel_dynamics, sharded + ["--shard=1"])
    assert helpers.read_csv(tmp_path / "two" / "kernel_dynamics.csv") == want
    assert len(want) == 3  # epochs 0, 0.5, 1


def test_tiles_of_another_kernel_are_refused_with_advice_that_works(tmp_path):
    """The refusal names what to do, and doing it (deleting the tile directory) lets the new kernel
    start; --overwrite, refused with --num_shards, is not suggested."""
    tiles = str(tmp_path / "tiles")
    check = kernel_shards._check_manifest  # noqa: SLF001  (the check alone, without a model)
    check(tiles, {"key": "a", "n": 4})
    with pytest.raises(kernel_shards.ShardMismatchError) as e:
        check(tiles, {"key": "b", "n": 4})
    assert str(e.value) == (f"{tiles} holds tiles of another kernel (differs in: key); delete {tiles} "
                            "(every shard then starts again) or choose another --workdir")
    shutil.rmtree(tiles)
    check(tiles, {"key": "b", "n": 4})
