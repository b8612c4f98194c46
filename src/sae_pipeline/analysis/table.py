"""The per-latent table as flat CSV rows: ``pd.read_csv("data/analysis/latents.csv")`` gives one column per field.

Lists become numbered columns (``label_0`` … ``label_9``, ``dla_*``, ``dlogit_*``) or space-separated strings
(class sets, nearest latents as ``id:cosine``, top example indices); the JSON twin keeps them as lists.
"""
from __future__ import annotations

SCALARS = ("latent", "dead", "dense", "n_train", "firing_rate_train", "n_test", "firing_rate", "mean_activation",
           "max_activation", "mode_label", "purity", "purity_lo", "purity_hi", "lift", "entropy_bits", "grade",
           "claimed_precision", "train_share", "train_share_lo", "heldout_precision", "heldout_recall",
           "dla_top_class", "intervention_value", "intervention_n", "intervention_top_class", "flip_to_top_class",
           "ablation_delta_acc", "ablation_delta_acc_where_active", "ablation_delta_mode_logit")


def _join(values) -> str:
    return " ".join(str(v) for v in values)


def csv_rows(latents: list[dict]) -> list[dict]:
    rows = []
    for r in latents:
        row = {k: r[k] for k in SCALARS}
        row["hypothesis_classes"] = _join(r["hypothesis_classes"])
        row["top_classes"] = _join(r["top_classes"])
        row["top_classes_cum_share"] = _join(r["top_classes_cum_share"])
        row.update({f"label_{c}": v for c, v in enumerate(r["label_hist"])})
        row.update({f"dla_{c}": v for c, v in enumerate(r["dla"])})
        row.update({f"dlogit_{c}": v for c, v in enumerate(r["delta_logit"])})
        row.update({f"dlogprob_{c}": v for c, v in enumerate(r["delta_logprob"])})
        row["nearest"] = _join(f"{n['latent']}:{n['cosine']}" for n in r["nearest"])
        row["top_indices"] = _join(e["test_index"] for e in r["top_examples"])
        row["hypothesis"] = r["hypothesis"]
        rows.append(row)
    return rows
