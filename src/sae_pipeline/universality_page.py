"""plots/universality/index.html: every latent's best partner in every other site, linked to its card in that
site's feature browser; the most universal feature families (latents that are each other's best partners across
sites) with one example strip per model; and each site's exclusive latents. Offline, no script."""
from __future__ import annotations

import html

FAMILY_RHO = 0.5  # a family links latents that are mutual best partners with at least this correlation
EXCLUSIVE_RHO = 0.2  # a latent is exclusive to its site when no other site has a partner above this
N_FAMILIES, N_EXCLUSIVE = 30, 12


def families(sites: list[str], partners: dict) -> list[list[tuple[str, int, float]]]:
    """Connected groups of (site, latent) joined by mutual best partners with ρ >= FAMILY_RHO, largest (most sites,
    then highest mean ρ) first; each member with its best ρ inside the group."""
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    best_rho: dict = {}
    for (a, b), table in partners.items():
        back = partners[(b, a)]
        for i, (j, r) in table.items():
            if r >= FAMILY_RHO and back.get(j, (None,))[0] == i:
                parent[find((a, i))] = find((b, j))
                best_rho[(a, i)] = max(best_rho.get((a, i), 0.0), r)
    groups: dict = {}
    for node in best_rho:
        groups.setdefault(find(node), []).append((*node, best_rho[node]))
    order = {s: k for k, s in enumerate(sites)}
    out = [sorted(g, key=lambda m: (order[m[0]], -m[2])) for g in groups.values()]
    return sorted(out, key=lambda g: (-len({m[0] for m in g}), -sum(m[2] for m in g) / len(g)))


def exclusive(site: str, sites: list[str], partners: dict, n_test: dict[int, int]) -> list[tuple[int, float]]:
    """Live latents of ``site`` with no partner above EXCLUSIVE_RHO in any other site, most frequent first, with
    their highest partner ρ."""
    out = []
    for u, n in n_test.items():
        if n <= 0:
            continue
        top = max(partners[(site, o)].get(u, (None, 0.0))[1] for o in sites if o != site)
        if top < EXCLUSIVE_RHO:
            out.append((u, top, n))
    return [(u, r) for u, r, _ in sorted(out, key=lambda t: -t[2])]


def score_table(scores: dict[str, dict]) -> str:
    """The U table: per pair of sites and measure, U with its 95% interval, and the cross, floor and ceiling
    values it is computed from (``universality.u_score``)."""
    if not scores:
        return ""
    measures = list(next(iter(scores.values())))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in measures)

    def cell(u):
        ci = u.get("U_ci95")
        val = "n/a" if u["U"] is None else f"{u['U']:.2f}"
        rng = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else ""
        return f"<td><b>{val}</b>{rng}<br><small>{u['cross']:.3f} (floor {u['floor']:.3f}, ceiling " \
               f"{u['ceiling']:.3f})</small></td>"

    rows = "".join(f"<tr><td>{html.escape(k)}</td>{''.join(cell(v[m]) for m in measures)}</tr>"
                   for k, v in scores.items())
    return ("<h2 id='scores'>How universal: U between the floor and the ceiling</h2><p>U = (cross − floor) / "
            "(ceiling − floor): 0 is what untrained networks of the two architectures share (floor), 1 what each "
            "site shares with itself trained from another seed (ceiling); 95% bootstrap intervals over latents. "
            f"</p><table><tr><th>pair</th>{head}</tr>{rows}</table>")


def page_html(sites: list[str], partners: dict, n_test: dict[str, dict[int, int]], dashboards: str,
              scores: dict[str, dict] | None = None) -> str:
    """``dashboards``: the folder of the sites' browsers relative to the page; ``scores``: each pair's
    ``universality_score`` (metrics/universality.json)."""
    def card(s, u):
        return f'<a href="{html.escape(dashboards)}/{html.escape(s)}/index.html#latent-{u}">{html.escape(s)} #{u}</a>'

    def strip(s, u):
        return f'<img alt="{html.escape(s)} #{u}" src="{html.escape(dashboards)}/{html.escape(s)}/img/ex_{u}.png">'

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Universality across sites</title><style>"
             "body{font:14px sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 6px}img{max-height:90px;vertical-align:middle;margin:2px}.fam{margin:0 0 1em 0}</style>"
             "</head><body><h1>Universality across sites</h1>"
             "<p>Best partners by Pearson correlation of latent activations on the shared test images "
             "(<code>metrics/universality.json</code> has every measure with its nulls). Each link opens the "
             "latent's card in its site's browser.</p>", score_table(scores or {})]
    fams = families(sites, partners)
    parts.append(f"<h2 id='families'>Most universal feature families</h2><p>{len(fams)} groups of latents that are "
                 f"mutual best partners with ρ ≥ {FAMILY_RHO} across sites; the first {N_FAMILIES}, one example "
                 "strip per member:</p>")
    for k, fam in enumerate(fams[:N_FAMILIES]):
        members = "".join(f"<div>{card(s, u)} (ρ {r:.2f}) {strip(s, u)}</div>" for s, u, r in fam)
        parts.append(f"<div class='fam' id='family-{k}'><b>family {k + 1}</b> "
                     f"({len({m[0] for m in fam})} sites){members}</div>")
    parts.append(f"<h2 id='exclusive'>Exclusive latents</h2><p>Live latents with no partner above ρ {EXCLUSIVE_RHO} "
                 f"in any other site, most frequent first (up to {N_EXCLUSIVE} a site).</p>")
    for s in sites:
        ex = exclusive(s, sites, partners, n_test[s])
        items = "".join(f"<div>{card(s, u)} (best ρ {r:.2f}) {strip(s, u)}</div>" for u, r in ex[:N_EXCLUSIVE])
        parts.append(f"<h3>{html.escape(s)}: {len(ex)} exclusive</h3>{items}")
    parts.append("<h2 id='partners'>Every latent's best partner in each other site</h2>")
    for s in sites:
        others = [o for o in sites if o != s]
        head = "".join(f"<th>{html.escape(o)}</th>" for o in others)
        rows = []
        for u in sorted(u for u, n in n_test[s].items() if n > 0):
            cells = "".join(
                f"<td>{card(o, partners[(s, o)][u][0])} {partners[(s, o)][u][1]:.2f}</td>" if u in partners[(s, o)]
                else "<td></td>" for o in others)
            rows.append(f"<tr id='{html.escape(s)}-{u}'><td>{card(s, u)}</td>{cells}</tr>")
        parts.append(f"<h3>{html.escape(s)}</h3><table><tr><th>latent</th>{head}</tr>{''.join(rows)}</table>")
    parts.append("</body></html>")
    return "".join(parts)
