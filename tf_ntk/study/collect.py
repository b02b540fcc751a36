"""What the sweep measured, read back: every job's output (evaluation.json, kernel CSVs, eigen-images,
kernel machines, transfer sets) under the sweep directory, keyed by run name (`Collected`), for the
claims (`tf_ntk.study.claims`), the report and the board.
"""

from __future__ import annotations

from collections.abc import Mapping
import csv
import dataclasses
import io
import json
from typing import Any

from tf_ntk import rundir
from tf_ntk.robust import evaluation
from tf_ntk.study import plan
from tf_ntk.study import presets


def read_csv(path: str) -> list[dict[str, Any]]:
    """Rows of a CSV a job wrote, numbers as floats (NaN for empty cells; the run column as text)."""
    if not rundir.exists(path):
        return []
    rows = list(csv.DictReader(io.StringIO(rundir.read_text(path))))
    for row in rows:
        for key, value in row.items():
            if key != "run":
                row[key] = float(value) if value not in ("", None) else float("nan")
    return rows


@dataclasses.dataclass
class Collected:
    """Everything the sweep measured, keyed by run name.

    Attributes:
      evals: {run: {"benign", "robust", "protocol", "strong", "examples", "path", "per_example"
        ({"benign", "robust", …}: '0'/'1' strings), "sanity_failed" (names of failed sanity checks),
        "transfer" ([{"from", "accuracy", …}]: parent's set first, then the sibling's),
        "output_terms" (linearized runs: {"clean"|"adversarial": {"spawn_term", "kernel_term", "sum"}})}}.
      kernels: {phase-1 run: [row of kernel_dynamics.csv, by epoch]}.
      comparisons: {(run a, run b): {epoch: distance}}.
      features: {phase-1 run: eigen_images.npz path}.
      missing: outputs not (yet) there.
      machines: {phase-1 run: {spawn epoch: row of kernel_machine.json}} (tf-ntk-kernel-machine).
      transfer_sets: {transfer name: the crafting evaluation's record} (the spawn's own accuracy).
    """

    evals: dict
    kernels: dict
    comparisons: dict
    features: dict
    missing: list
    machines: dict = dataclasses.field(default_factory=dict)
    transfer_sets: dict = dataclasses.field(default_factory=dict)


def _eval_record(r: Mapping[str, Any], path: str) -> dict[str, Any]:
    sanity = r.get("sanity_checks") or {}
    return {"benign": r["benign_accuracy"], "robust": r["robust_accuracy"],
            "protocol": r["robust"]["protocol"]["accuracy"],
            "strong": (r["robust"].get("strong") or {}).get("accuracy"), "examples": r["examples"],
            "path": path, "per_example": r.get("per_example"),
            "sanity_failed": [c["name"] for c in sanity.get("checks", ()) if not c["passed"]],
            "sanity_run": bool(sanity), "transfer": r.get("transfer") or [],
            "output_terms": r.get("output_terms")}


def collect(preset: presets.Preset, sweep_dir: str) -> Collected:
    """Reads every output of ``preset``'s plan under ``sweep_dir`` (missing ones are listed)."""
    out = Collected({}, {}, {}, {}, [])
    for job in plan.plan(preset, sweep_dir):
        if job.output is None:
            continue
        if not rundir.exists(job.output):
            out.missing.append(job.name)
            continue
        kind, name = job.name.split("/", 1)
        if kind == "eval":
            out.evals[name] = _eval_record(evaluation.read_evaluation(job.output), job.output)
        elif kind == "transfer":
            out.transfer_sets[name] = _eval_record(evaluation.read_evaluation(job.output), job.output)
        elif kind == "kernels" and "_vs_" in name:
            a, b = name.split("_vs_")
            out.comparisons[(a, b)] = {row["epoch"]: row["distance"] for row in read_csv(job.output)}
        elif kind == "kernels":
            out.kernels[name] = sorted(read_csv(job.output), key=lambda row: row["epoch"])
        elif kind == "features":
            out.features[name] = job.output
        elif kind == "kernel_machine":
            rows = json.loads(rundir.read_text(job.output))["rows"]
            out.machines[name] = {float(row["epoch"]): row for row in rows}
    return out


VELOCITY_RATIO = 0.1  # phase 1 has reached its lazy phase when the final velocity is below 10% of peak


def velocity_ratio(collected: Collected, run: str) -> float | None:
    """The kernel's velocity at the last kernel epoch over its peak velocity (None if unmeasured)."""
    velocities = [row.get("velocity") for row in collected.kernels.get(run, [])]
    velocities = [v for v in velocities if v is not None and v == v]
    if not velocities or not max(velocities):
        return None
    return velocities[-1] / max(velocities)


