"""The tables of docs/universality.md, printed from a universality.json (default: the committed metrics).

    python tools/universality_tables.py [metrics/universality.json]

The docs quote the committed run; after a run that changes any site's SAE, paste these tables over the old ones
instead of editing numbers by hand. Also printed: the ranges over the cross-architecture pairs that the README's
universality paragraph quotes. Reads only the JSON the `universality` stage writes (no torch, no project code).
"""
import argparse
import json
from pathlib import Path


def within(key: str) -> bool:
    """Whether a pair key ``<site>~<site>`` names two sites of one model (site names are <model>-<site>)."""
    a, b = (site.split("-")[0] for site in key.split("~"))
    return a == b


def f(x, digits=3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def ci(lo_hi, digits=3) -> str:
    return "" if lo_hi[0] is None else f" [{lo_hi[0]:.{digits}f}, {lo_hi[1]:.{digits}f}]"


def ordered(pairs: dict) -> list[str]:
    """Cross-architecture pairs first (in the file's order), then pairs within one model."""
    return sorted(pairs, key=within)


def label(key: str, mark_within: bool = True) -> str:
    a, b = key.split("~")
    return f"*within a model:* {a} / {b}" if mark_within and within(key) else f"{a} / {b}"


def matching_table(pairs: dict) -> list[str]:
    rows = ["| pair | Hungarian mean ρ [95%] | images shuffled | random dictionaries | raw units | mutual NN ρ≥0.5 / "
            "≥0.7 | CKA raw / SAE codes | SVCCA (null mean, p) | RSA (null mean, p) | pairs matched at ρ≥0.5: "
            "digit-histogram cosine / hypothesis Jaccard / Δlogit ρ / mean-image ρ | as many random pairs |",
            "|" + "---|" * 11]
    for key in ordered(pairs):
        p = pairs[key]
        s, g, m, r = p["sae"], p["geometry"], p["meaning_matched"], p["meaning_random_pairs"]
        meaning = lambda d: " / ".join(f(d[k], 2) for k in ("label_hist_cosine", "hypothesis_jaccard",  # noqa: E731
                                                            "delta_logit_corr", "mean_image_corr"))
        rows.append(
            f"| {label(key, mark_within=False)} | {f(s['hungarian_mean'])}{ci(s['hungarian_mean_ci95'])} | "
            f"{f(s['null_shuffled']['hungarian_mean'])} | {f(p['random_dictionary']['hungarian_mean'])} | "
            f"{f(p['raw']['hungarian_mean'])} | {s['mutual_nn_rho_0.5']} / {s['mutual_nn_rho_0.7']} | "
            f"{f(p['cka_raw'], 2)} / {f(p['cka_sae'], 2)} | {f(g['svcca'], 2)} ({f(g['svcca_null_mean'], 2)}, "
            f"{f(g['svcca_p'], 2)}) | {f(g['rsa'])} ({f(g['rsa_null_mean'])}, {f(g['rsa_p'], 2)}) | "
            f"{m['n']}: {meaning(m)} | {meaning(r)} |")
    return rows


def score_table(pairs: dict) -> list[str]:
    rows = ["| pair | Hungarian mean ρ: cross / floor / ceiling | U [95%] | mutual-NN share ρ ≥ 0.5: cross / floor / "
            "ceiling | U [95%] | raw units, Hungarian U [95%] | CKA of codes, U |", "|" + "---|" * 7]
    for key in ordered(pairs):
        u = pairs[key]["universality_score"]
        h, sh, raw, cka = (u[k] for k in ("sae_hungarian_mean", "sae_mutual_share_0.5", "raw_hungarian_mean",
                                          "sae_cka"))
        rows.append(
            f"| {label(key)} | {f(h['cross'])} / {f(h['floor'])} / {f(h['ceiling'])} | {f(h['U'], 2)}"
            f"{ci(h['U_ci95'], 2)} | {f(sh['cross'])} / {f(sh['floor'])} / {f(sh['ceiling'])} | {f(sh['U'], 2)}"
            f"{ci(sh['U_ci95'], 2)} | {f(raw['U'], 2)}{ci(raw['U_ci95'], 2)} | {f(cka['U'], 2)} |")
    return [r.replace("-0.", "−0.") for r in rows]


def ranges(pairs: dict) -> list[str]:
    """min–max over the cross-architecture pairs of what the README's paragraph quotes."""
    cross = [p for k, p in pairs.items() if not within(k)]

    def span(get, digits=2) -> str:
        vals = [get(p) for p in cross]
        return f"{min(vals):.{digits}f}–{max(vals):.{digits}f}"

    u = lambda k: (lambda p: p["universality_score"][k]["U"])  # noqa: E731
    return [
        f"cross-architecture pairs: {len(cross)}",
        f"Hungarian mean ρ {span(lambda p: p['sae']['hungarian_mean'])}; shuffled "
        f"{span(lambda p: p['sae']['null_shuffled']['hungarian_mean'])}; random dictionaries "
        f"{span(lambda p: p['random_dictionary']['hungarian_mean'])}; floor "
        f"{span(lambda p: p['universality_score']['sae_hungarian_mean']['floor'])}; ceiling "
        f"{span(lambda p: p['universality_score']['sae_hungarian_mean']['ceiling'])}",
        f"U (Hungarian) {span(u('sae_hungarian_mean'))}; U (mutual share ρ≥0.5) {span(u('sae_mutual_share_0.5'))}",
        f"matched pairs: histogram cosine {span(lambda p: p['meaning_matched']['label_hist_cosine'])} (random "
        f"{span(lambda p: p['meaning_random_pairs']['label_hist_cosine'])}), Jaccard "
        f"{span(lambda p: p['meaning_matched']['hypothesis_jaccard'])} (random "
        f"{span(lambda p: p['meaning_random_pairs']['hypothesis_jaccard'])}), mean image "
        f"{span(lambda p: p['meaning_matched']['mean_image_corr'])} (random "
        f"{span(lambda p: p['meaning_random_pairs']['mean_image_corr'])})",
    ] + [f"  {k.replace('~', ' / ')}: U {f(p['universality_score']['sae_hungarian_mean']['U'], 2)}"
         f"{ci(p['universality_score']['sae_hungarian_mean']['U_ci95'], 2)}"
         for k, p in pairs.items() if not within(k)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default="metrics/universality.json", type=Path)
    path = ap.parse_args().path
    try:
        pairs = json.loads(path.read_text())["pairs"]
    except (OSError, ValueError, KeyError) as exc:  # one line, not a traceback
        ap.exit(1, f"error: {path} is not a universality stage's metrics ({type(exc).__name__}: {exc})\n")
    print("\n".join(matching_table(pairs) + [""] + score_table(pairs) + [""] + ranges(pairs)))


if __name__ == "__main__":
    main()
