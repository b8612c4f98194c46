"""The cross-machine reproducibility contract agrees with its measurements (bench/repro_matrix.json, made by
`python bench/repro_matrix.py`): every CPU-kernel variant changes the bytes of the outputs, and every stated
metric stays within the tolerances that the README and docs/reproducibility.md promise."""
import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import repro_matrix  # noqa: E402


def test_measured_drift_is_within_the_stated_tolerances():
    report = json.loads((ROOT / "bench/repro_matrix.json").read_text())
    ref = report["variants"]["ref"]["metrics"]
    variants = {n: v for n, v in report["variants"].items() if n != "ref"}
    assert {"threads1", "threads4", "aten_default", "mkl_compatible", "pinned"} <= set(variants)
    for name, v in variants.items():
        assert v["changed_outputs"], name  # other kernels: other bytes (so byte-identity is per machine type)
        assert repro_matrix.outside(ref, v["metrics"]) == [], name
    assert set(repro_matrix.TOLERANCES) <= set(ref)


def test_tolerance_check_flags_a_metric_outside():
    ref = {k: 1.0 for k in repro_matrix.TOLERANCES}
    got = dict(ref)
    got["metrics/summary.json:fvu"] = 1.5  # +50%, over the 20% allowed
    assert repro_matrix.outside(ref, got) == ["metrics/summary.json:fvu"]
