"""bench/accelerator.py --smoke: the accelerator check's code runs on CPU and writes its record."""

import json

from bench import accelerator
from tests import helpers


def test_accelerator_check_runs_in_smoke_mode_and_writes_its_record(tmp_path, capsys):
    out = tmp_path / "acc.json"
    helpers.run_binary(accelerator, ["--smoke", f"--output={out}"])
    result = json.loads(out.read_text())
    assert result["smoke"] and result["device"] in ("cpu", "gpu", "tpu")
    assert set(result["steps_seconds"]) == {f"{s}_{c}" for s in ("standard", "adversarial", "linearized")
                                            for c in ("tf", "xla")}
    assert all(v > 0 for v in result["steps_seconds"].values()) and result["kernel_seconds"] > 0
    assert result["ratios"]["standard_tf"] == 1.0
    assert "per-logit kernel on 16 images" in capsys.readouterr().out
    assert (tmp_path / "acc.txt").read_text().startswith("ResNet-18 width 2")
