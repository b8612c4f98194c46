"""Sparsity-fidelity Pareto plot from `dvc exp show --json`: FVU, KL and Δacc vs L0, one line per SAE arch.

Reads only the experiments' metrics and params (git refs), so it works in a clone that ran nothing."""
import argparse
import json
import os
import subprocess

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def runs(node):
    """Every run in exp show's JSON (commits, experiments, their revs): (name, rev, data), where data holds the
    run's "metrics" and "params"; the workspace is named by its rev, "workspace"."""
    if isinstance(node, list):
        for n in node:
            yield from runs(n)
    elif isinstance(node, dict):
        data = node.get("data")
        if isinstance(data, dict) and "metrics" in data and "params" in data:
            yield node.get("name") or data.get("name") or node.get("rev"), data.get("rev", node.get("rev")), data
        for v in node.values():
            if isinstance(v, (list, dict)):
                yield from runs(v)


def _rows(exp_show, out, site):
    """Every run with a summary of ``site`` (its SAE params: ``sae`` with the site's own ``sites.<site>.sae``
    overrides on top)."""
    for name, rev, data in runs(exp_show):
        summary = (data.get("metrics") or {}).get(f"metrics/sites/{site}/summary.json", {}).get("data")
        params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
        if summary and "sae" in params:
            sae = {**params["sae"], **(((params.get("sites") or {}).get(site) or {}).get("sae") or {})}
            out.append({"name": name, "rev": rev, "site": site,
                        "arch": sae["arch"], "target_actives": sae["target_actives"],
                        "recipe": sae.get("recipe", ""),
                        "l0_test": summary["achieved_actives_test"], "delta_acc": summary["delta_acc_jumprelu"],
                        "fvu": summary["fvu"], "kl": summary.get("kl_logits"),
                        "pred_flip_frac": summary.get("pred_flip_frac"), "dead_frac": summary["dead_frac"],
                        "dense_frac": summary.get("dense_frac"), "baseline_acc": summary["baseline_acc"]})


def table(exp_show: list, prefix: str = "", site: str = "mlp-hidden") -> pd.DataFrame:
    rows = []
    _rows(exp_show, rows, site)
    df = pd.DataFrame(rows)
    if prefix and not df.empty:
        df = df[df["name"].astype(str).str.startswith(prefix)]
    if df.empty:
        raise SystemExit(f"no experiment with metrics/sites/{site}/summary.json in `dvc exp show --json`")
    # workspace, HEAD and an applied experiment can repeat one run: keep one row per (arch, target)
    df = df.drop_duplicates(subset=["arch", "target_actives"], keep="last")
    return df.sort_values(["arch", "target_actives"]).reset_index(drop=True)


def plot(df: pd.DataFrame, path: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    for arch, g in df.groupby("arch"):
        axes[0].plot(g["l0_test"], g["fvu"], marker="o", label=arch)
        axes[1].plot(g["l0_test"], g["kl"], marker="o", label=arch)
        axes[2].plot(g["l0_test"], 100 * g["delta_acc"], marker="o", label=arch)
    axes[0].set(xlabel="L0 (test)", ylabel="FVU (lower is better)", xscale="log", yscale="log",
                title="Reconstruction vs sparsity")
    axes[1].set(xlabel="L0 (test)", ylabel="KL(base || spliced), nats", xscale="log", yscale="log",
                title="Logit fidelity vs sparsity")
    axes[2].set(xlabel="L0 (test)", ylabel="Δacc (pp; a net count, noisy)", xscale="log",
                title="Spliced accuracy loss vs sparsity")
    ticks = sorted(df["target_actives"].unique())
    for ax in axes:
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-png", default="docs/pareto.png")
    ap.add_argument("--out-csv", default="docs/pareto.csv")
    ap.add_argument("--exp-json", help="saved `dvc exp show --json` output; default: run it")
    ap.add_argument("--prefix", default="sweep-", help="only experiments whose name starts with this")
    ap.add_argument("--rev", default="HEAD", help="the commit the experiments were based on")
    ap.add_argument("--site", default="mlp-hidden", help="the site whose SAE the experiments varied")
    args = ap.parse_args()
    if args.exp_json:
        with open(args.exp_json) as f:
            data = json.load(f)
    else:
        out = subprocess.run(["dvc", "exp", "show", "--json", "--rev", args.rev], capture_output=True, text=True,
                             check=True)
        data = json.loads(out.stdout)
    df = table(data, args.prefix, args.site)
    for out in (args.out_csv, args.out_png):
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    df.to_csv(args.out_csv, index=False, lineterminator="\n")
    plot(df, args.out_png)
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
