"""Binaries end to end on digits with tiny settings: in-process through absl flag parsing, plus one
subprocess that checks the terminal stays free of TensorFlow's C++ noise and errors are one line."""

import os
import subprocess
import sys

from absl import flags
import pytest

from binaries import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_in_process(module, argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["prog"] + argv)
    try:
        module.main(["prog"])
    finally:
        flags.FLAGS.unparse_flags()


def test_train_prints_benign_and_robust_accuracy(capsys):
    _run_in_process(train, ["--epochs=1", "--width=4", "--eps=0.2", "--attack_steps=2",
                            "--adversarial", "--batch_size=256"])
    out = capsys.readouterr().out
    assert "epoch   1/1" in out
    benign = float(out.split("benign accuracy ")[1].split()[0])
    robust = float(out.split("robust accuracy ")[1].split()[0])
    assert 0.0 <= robust <= benign <= 1.0 and benign > 0.2


def test_eps_flag_accepts_fractions_and_rejects_out_of_range():
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["prog", "--eps=4/255"])
    assert flags.FLAGS.eps == pytest.approx(4 / 255)
    flags.FLAGS.unparse_flags()
    with pytest.raises(flags.IllegalFlagValueError, match="range"):
        flags.FLAGS(["prog", "--eps=1.5"])
    flags.FLAGS.unparse_flags()


def test_subprocess_is_quiet_and_bad_input_is_one_line(tmp_path):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "binaries.train", "--dataset=cifar10", f"--data_dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("train: error: data set 'cifar10' is not prepared")
    assert "tfds build cifar10" in proc.stderr
