"""The built wheel, installed as a user would, outside the checkout: its console commands run.

The wheel is built offline from a copy of the sources (so the checkout gains no build/ or
egg-info), then installed with --no-deps into a fresh virtual environment that sees this
environment's already installed dependencies through a .pth file. Those paths come after the new
environment's own site-packages, and a .pth file's paths are not site directories (their own .pth
files, such as an editable install's finder, do not run), so `tf_ntk` is the wheel's copy.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("train", "evaluate", "compute-kernel", "kernel-dynamics", "kernel-machine", "visualize-features", "results",
            "reproduce")
pytestmark = pytest.mark.xdist_group("install")  # one worker builds and installs the wheel once
# TensorFlow's C++ start-up lines that tf_ntk.cli mutes.
NOISE = ("oneDNN custom operations", "cudart_stub", "cpu_feature_guard", "absl::InitializeLog")


def _sources(dest):
    """Copies what the wheel is built from (setup.py, pyproject.toml, the tf_ntk package) to ``dest``."""
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(os.path.join(ROOT, name), dest / name)
    shutil.copytree(os.path.join(ROOT, "tf_ntk"), dest / "tf_ntk",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _run(argv, cwd, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin directory of the fresh environment, a working directory outside the checkout)."""
    tmp = tmp_path_factory.mktemp("install")
    src, dist, env_dir, cwd = tmp / "src", tmp / "dist", tmp / "env", tmp / "elsewhere"
    for d in (src, cwd):
        d.mkdir()
    _sources(src)
    built = _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                  "--no-index", "--wheel-dir", str(dist), "--quiet"], cwd=tmp)
    assert built.returncode == 0, built.stderr
    wheels = list(dist.glob("tf_ntk-*.whl"))
    assert len(wheels) == 1, wheels
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
    (pathlib.Path(site.stdout.strip()) / "_tf_ntk_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                 "--quiet", str(wheels[0])], cwd=tmp)
    assert done.returncode == 0, done.stderr
    yield env_dir / "bin", cwd
    shutil.rmtree(tmp, ignore_errors=True)


def test_the_wheel_installs_every_command_and_its_own_package(installed):
    bin_dir, cwd = installed
    for name in COMMANDS:
        assert os.access(bin_dir / f"tf-ntk-{name}", os.X_OK), f"tf-ntk-{name} is not installed"
    where = _run([str(bin_dir / "python"), "-c", "import tf_ntk; print(tf_ntk.__file__)"], cwd=cwd)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(bin_dir.parent)), where.stdout  # not the checkout's


def test_helpfull_lists_the_flags_and_is_quiet(installed):
    bin_dir, cwd = installed
    proc = _run([str(bin_dir / "tf-ntk-train"), "--helpfull"], cwd=cwd)
    assert proc.returncode == 1, proc.stderr  # absl's --help and --helpfull exit with status 1
    assert proc.stdout.startswith("Trains a network"), proc.stdout[:200]
    for flag in ("--workdir", "--data_mode", "--eps", "--dynamics"):
        assert f"  {flag}:" in proc.stdout, flag
    assert not any(line in proc.stderr for line in NOISE), proc.stderr


def test_one_epoch_digits_run_from_outside_the_checkout(installed):
    bin_dir, cwd = installed
    proc = _run([str(bin_dir / "tf-ntk-train"), "--workdir=run", "--model=mlp", "--width=4", "--epochs=1",
                 "--batch_size=256", "--eval_every=0", "--eval_attack_steps=1", "--save_epochs="], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # no TensorFlow start-up noise, no warnings
    results = json.loads((cwd / "run" / "results.json").read_text())
    assert results["flags"]["model"] == "mlp" and results["flags"]["epochs"] == 1
    assert 0.0 <= results["benign_accuracy"] <= 1.0
    bad = _run([str(bin_dir / "tf-ntk-train"), "--workdir=run2", "--epochs=0"], cwd=cwd)
    assert bad.returncode == 2 and bad.stderr.startswith("tf-ntk-train: error: "), bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
