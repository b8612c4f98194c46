// Feature browser: every latent of the SAE in one sortable, filterable table; a card per latent (#latent-<id>);
// a per-digit view and the baselines. No libraries and no network: the data is the JSON block in the page.
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const L = DATA.latents;
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const pct = (v, d = 1) => (v === null || v === undefined) ? "–" : (100 * v).toFixed(d) + "%";
const num = (v, d = 3) => (v === null || v === undefined) ? "–" : Number(v).toFixed(d);
const GRADE_ORDER = {high: 0, medium: 1, low: 2, none: 3};

// ---------- table ----------
const COLUMNS = [
  {key: "id", label: "latent", value: (r) => r.id, show: (r) => `<a href="#latent-${r.id}">${r.id}</a>`},
  {key: "rate", label: "firing rate", value: (r) => r.rate, show: (r) => pct(r.rate, 2)},
  {key: "n", label: "firings (test)", value: (r) => r.n, show: (r) => r.n},
  {key: "mode", label: "mode digit", value: (r) => r.mode, show: (r) => r.n ? r.mode : "–"},
  {key: "purity", label: "purity", value: (r) => r.purity, show: (r) => num(r.purity, 2)},
  {key: "lo", label: "95% CI", value: (r) => r.lo, show: (r) => `${num(r.lo, 2)}–${num(r.hi, 2)}`},
  {key: "lift", label: "lift", value: (r) => r.lift, show: (r) => num(r.lift, 1)},
  {key: "classes", label: "hypothesis digits", value: (r) => r.classes.join(" "), show: (r) => r.classes.join(", ") || "–"},
  {key: "grade", label: "grade", value: (r) => GRADE_ORDER[r.grade], show: (r) => `<span class="g-${r.grade}">${r.grade}</span>`},
  {key: "prec", label: "held-out precision", value: (r) => r.prec === null ? -1 : r.prec, show: (r) => pct(r.prec)},
  {key: "rec", label: "held-out recall", value: (r) => r.rec === null ? -1 : r.rec, show: (r) => pct(r.rec)},
  {key: "top", label: "boosts logit", value: (r) => r.top, show: (r) => r.n ? `${r.top} (${num(r.dl[r.top], 2)})` : "–"},
  {key: "flags", label: "flags", value: (r) => (r.dead ? "dead" : r.dense ? "dense" : ""), show: (r) => (r.dead ? "dead" : r.dense ? "dense" : "")},
];
const state = {sort: "lo", dir: -1};  // by the lower end of the purity interval: 3 of 3 does not top the list

function passes(r) {
  const status = $("#f-status").value, cls = $("#f-class").value, grade = $("#f-grade").value;
  const q = $("#f-search").value.trim();
  if (q && String(r.id) !== q) return false;
  if (status === "live" && r.dead) return false;
  if (status === "dead" && !r.dead) return false;
  if (status === "dense" && !r.dense) return false;
  if (status === "sparse" && (r.dense || r.dead)) return false;
  if (cls !== "" && !(r.classes.includes(+cls) || (r.n && r.mode === +cls && !r.classes.length))) return false;
  if (grade !== "" && r.grade !== grade) return false;
  if (r.purity < (+$("#f-purity").value || 0)) return false;
  if (r.rate < (+$("#f-rate").value || 0) / 100) return false;
  return true;
}

function renderTable() {
  const col = COLUMNS.find((c) => c.key === state.sort);
  const rows = L.filter(passes).sort((a, b) => {
    const x = col.value(a), y = col.value(b);
    const c = (typeof x === "string" || typeof y === "string") ? String(x).localeCompare(String(y)) : x - y;
    return state.dir * c || a.id - b.id;
  });
  $("#latents thead").innerHTML = "<tr>" + COLUMNS.map((c) =>
    `<th data-key="${c.key}" class="${c.key === state.sort ? (state.dir > 0 ? "asc" : "desc") : ""}">${c.label}</th>`).join("") + "</tr>";
  $("#latents tbody").innerHTML = rows.map((r) => `<tr data-id="${r.id}">` +
    COLUMNS.map((c) => `<td data-key="${c.key}">${c.show(r)}</td>`).join("") + "</tr>").join("");
  $("#count").textContent = `${rows.length} of ${L.length} latents shown`;
}

// ---------- charts (inline SVG, with axes) ----------
function barChart({values, labels, title, xlabel, ylabel, highlight = [], width = 300, height = 150, fmt = (v) => num(v, 2)}) {
  const m = {l: 44, r: 8, t: 18, b: 30}, w = width - m.l - m.r, h = height - m.t - m.b;
  const lo = Math.min(0, ...values), hi = Math.max(0, ...values), span = (hi - lo) || 1;
  const y = (v) => m.t + (hi - v) / span * h, step = w / values.length;
  let s = `<svg class="chart" width="${width}" height="${height}" role="img" aria-label="${esc(title)}">`;
  s += `<text x="${m.l}" y="12" class="ct">${esc(title)}</text>`;
  values.forEach((v, i) => {
    const x = m.l + i * step + 1, y0 = y(0), y1 = y(v);
    s += `<rect x="${x}" y="${Math.min(y0, y1)}" width="${Math.max(step - 2, 1)}" height="${Math.max(Math.abs(y1 - y0), 0.5)}" class="${highlight.includes(i) ? "hl" : "bar"}"><title>${esc(labels[i])}: ${fmt(v)}</title></rect>`;
    if (labels.length <= 10 || i % Math.ceil(labels.length / 10) === 0)
      s += `<text x="${x + step / 2 - 1}" y="${m.t + h + 11}" class="tick" text-anchor="middle">${esc(labels[i])}</text>`;
  });
  s += `<line x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${m.t + h}" class="axis"/>`;
  s += `<line x1="${m.l}" x2="${m.l + w}" y1="${y(0)}" y2="${y(0)}" class="axis"/>`;
  [hi, lo].filter((v, i) => i === 0 || v !== 0).forEach((v) => { s += `<text x="${m.l - 3}" y="${y(v) + 4}" class="tick" text-anchor="end">${fmt(v)}</text>`; });
  if (lo < 0 && hi > 0) s += `<text x="${m.l - 3}" y="${y(0) + 4}" class="tick" text-anchor="end">0</text>`;
  s += `<text x="${m.l + w / 2}" y="${height - 2}" class="al" text-anchor="middle">${esc(xlabel)}</text>`;
  s += `<text x="10" y="${m.t + h / 2}" class="al" text-anchor="middle" transform="rotate(-90 10 ${m.t + h / 2})">${esc(ylabel)}</text>`;
  return s + "</svg>";
}

// ---------- card ----------
function examplesBlock(r) {
  const t = DATA.tile, scale = 2, pitch = (t.size + t.gap) * scale;
  const rows = 1 + Math.max(0, ...r.ex.map((e) => e[4]));
  const caps = r.ex.map((e) => `<span class="cap${e[3] ? " band" : ""}" style="left:${e[5] * pitch}px;top:${e[4] * pitch + t.size * scale - 13}px" title="test #${e[0]}${e[3] ? ", band " + e[3] : ""}">${e[1]}·${num(e[2], 2)}</span>`).join("");
  const bandRow = r.ex.find((e) => e[3]);
  return `<div class="tiles" style="width:${(t.cols * (t.size + t.gap) - t.gap) * scale}px;height:${(rows * (t.size + t.gap) - t.gap) * scale}px">` +
    `<img class="px" loading="lazy" src="${DATA.img_prefix}ex_${r.id}.png" alt="examples of latent ${r.id}" width="${(t.cols * (t.size + t.gap) - t.gap) * scale}" height="${(rows * (t.size + t.gap) - t.gap) * scale}">${caps}</div>` +
    `<p class="note">Top rows: the ${r.ex.filter((e) => !e[3]).length} strongest activations. ${bandRow ? "Last row: random firings from the activation-quantile bands " + [...new Set(r.ex.filter((e) => e[3]).map((e) => e[3]))].join(", ") + " (weakest last)." : ""} Caption: true digit · activation.</p>`;
}

function heatBlock(r) {
  return `<div class="heat"><img class="px" loading="lazy" src="${DATA.img_prefix}heat_${r.id}.png" alt="input pattern of latent ${r.id}" width="232" height="112">` +
    `<div class="legend"><span>−${Number(r.heat).toPrecision(2)}</span><div class="ramp"></div><span>+${Number(r.heat).toPrecision(2)}</span></div>` +
    `<p class="note">Left: d(pre-activation)/d(pixel), averaged over the top examples (red raises it, blue lowers it; per pixel, in units of one grey level). Right: the top examples' mean.</p></div>`;
}

// Each latent's best partner in every other site, by correlation on the test images, with its example strip:
// written by the universality stage (window.PARTNERS, a script beside this page's site folder), absent for one site.
function partnersBlock(r) {
  const rows = (window.PARTNERS || {})[r.id];
  if (!rows || !rows.length) return "";
  return `<div class="partners"><h3>Partners in the other sites</h3>` + rows.map(([site, j, rho]) =>
    `<div class="partner"><a href="../${esc(site)}/index.html#latent-${j}">${esc(site)} #${j}</a> ρ ${num(rho, 2)}` +
    `<img class="px" loading="lazy" src="../${esc(site)}/img/ex_${j}.png" alt="examples of ${esc(site)} latent ${j}"></div>`).join("") +
    `<p class="note">Best partner in each other site by Pearson correlation of activations on the test images; its examples beside (the universality page has every measure).</p></div>`;
}

function renderCard(id) {
  const r = L[id];
  if (!r) { $("#card").innerHTML = `<p>No latent ${esc(id)}.</p>`; return; }
  const flags = [r.dead && "dead (never fires on train)", r.dense && "dense (fires on >10% of train inputs)", r.sel !== null && `feature_report #${r.sel + 1}`].filter(Boolean);
  let s = `<h2>Latent ${r.id} <span class="g-${r.grade}">${r.grade}</span> <small>${flags.join(" · ")}</small></h2>`;
  s += `<p class="hyp">${esc(r.text)}</p>`;
  s += `<dl class="facts">` +
    `<dt>firing rate (test)</dt><dd data-field="rate">${pct(r.rate, 2)}</dd>` +
    `<dt>firings (test / train)</dt><dd data-field="n">${r.n}</dd><dd>${r.ntrain}</dd>` +
    `<dt>mean / max activation</dt><dd>${num(r.mean)} / ${num(r.max)}</dd>` +
    `<dt>mode digit, purity (95% CI)</dt><dd data-field="purity">${r.n ? r.mode : "–"}, ${num(r.purity, 2)} (${num(r.lo, 2)}–${num(r.hi, 2)})</dd>` +
    `<dt>lift, label entropy</dt><dd>×${num(r.lift, 1)}, ${num(r.ent, 2)} bits</dd>` +
    `<dt>hypothesis digits, grade</dt><dd data-field="classes">${r.classes.join(", ") || "–"}</dd><dd data-field="grade">${r.grade}</dd>` +
    `<dt>held-out precision / recall</dt><dd data-field="prec">${pct(r.prec)}</dd><dd>${pct(r.rec)}</dd>` +
    `<dt>intervention (+${num(r.value, 2)} on ${r.nint} inputs where off)</dt><dd>boosts ${r.top} by ${num(r.dl[r.top], 2)}; flips ${pct(r.flip)} to ${r.top}</dd>` +
    `<dt>ablation where it fires</dt><dd>Δacc ${num(100 * r.ab[0], 3)} pp overall, ${num(100 * r.ab[1], 2)} pp where active; Δ logit of ${r.mode}: ${num(r.ab[2], 2)}</dd>` +
    `</dl>`;
  if (r.n) {
    s += examplesBlock(r) + `<div class="charts">` + heatBlock(r) +
      barChart({values: r.dens.c, labels: r.dens.e.slice(0, -1).map((e) => num(e, 2)), title: "activation density (test firings)", xlabel: "activation (bin start)", ylabel: "firings", fmt: (v) => String(Math.round(v))}) +
      barChart({values: r.hist, labels: [...Array(10).keys()].map(String), title: "digits when it fires (test)", xlabel: "digit", ylabel: "firings", highlight: r.classes, fmt: (v) => String(Math.round(v))}) +
      barChart({values: r.dl, labels: [...Array(10).keys()].map(String), title: "Δlogit when added (intervention)", xlabel: "digit", ylabel: "mean Δlogit", highlight: [r.top]}) +
      `</div>`;
  }
  s += partnersBlock(r);
  s += `<p>Nearest latents by decoder cosine: ${r.near.map(([j, c]) => `<a href="#latent-${j}">${j}</a> (${num(c, 2)})`).join(", ") || "–"}</p>`;
  $("#card").innerHTML = s;
  $("#card").dataset.latent = r.id;
  document.querySelectorAll("#latents tr.current").forEach((tr) => tr.classList.remove("current"));
  const tr = document.querySelector(`#latents tr[data-id="${r.id}"]`);
  if (tr) tr.classList.add("current");
}

// ---------- per-digit view and summary ----------
function renderDigits() {
  $("#digits").innerHTML = DATA.per_class.map((best, c) => `<div class="digit"><h3>${c}</h3><table><tr><th>latent</th><th>precision</th><th>recall</th></tr>` +
    best.map((b) => `<tr><td><a href="#latent-${b.l}">${b.l}</a></td><td>${pct(b.p, 0)}</td><td>${pct(b.r, 0)}</td></tr>`).join("") + "</table></div>").join("");
}

function renderSummary() {
  const F = DATA.families, fams = ["sae", "random", "neurons", "neurons_p90", "pca"].filter((f) => F[f]);
  const row = (label, get) => `<tr><th>${label}</th>` + fams.map((f) => `<td>${get(F[f])}</td>`).join("") + "</tr>";
  let s = `<table class="summary"><tr><th></th>${fams.map((f) => `<th>${f}</th>`).join("")}</tr>`;
  s += row("units (≥ " + DATA.min_count + " test firings)", (m) => `${m.n_units} (${m.n_counted})`);
  s += row("mean / median purity", (m) => `${num(m.purity_mean, 2)} / ${num(m.purity_median, 2)}`);
  s += row(`units with purity ≥ ${DATA.high_purity}`, (m) => m.n_high_purity);
  s += row("digits / test inputs they cover", (m) => `${m.n_classes_covered} / ${pct(m.inputs_covered, 0)}`);
  s += row("purity of top-100 activations", (m) => num(m.top100_purity_mean, 2));
  for (const k of ["1", "2", "5", "10"])
    s += row(`sparse probe k=${k}: bal. acc / F1`, (m) => m.probe ? `${num(m.probe[k].balanced_accuracy, 3)} / ${num(m.probe[k].f1, 2)}` : "same as neurons");
  s += `</table><p>Dense probe on all hidden units: balanced accuracy ${num(F.dense_probe.balanced_accuracy, 3)}, F1 ${num(F.dense_probe.f1, 2)}.</p>`;
  const cal = DATA.analysis.hypotheses.calibration_test;
  s += `<table class="summary"><tr><th>grade</th><th>latents</th><th>claims precision ≥</th><th>held-out precision (pooled)</th><th>latents consistent with claim</th></tr>` +
    Object.entries(cal).map(([g, c]) => `<tr><td class="g-${g}">${g}</td><td>${c.n_latents}</td><td>${pct(c.claimed_precision, 0)}</td><td>${pct(c.heldout_precision_pooled)}</td><td>${pct(c.share_consistent_with_claim, 0)}</td></tr>`).join("") + "</table>";
  $("#summary-body").innerHTML = s;
}

// ---------- wiring ----------
function route() {
  const m = location.hash.match(/^#latent-(\d+)$/);
  if (m) renderCard(+m[1]);
}
document.addEventListener("DOMContentLoaded", () => {
  const classSel = $("#f-class");
  for (let c = 0; c < 10; c++) classSel.insertAdjacentHTML("beforeend", `<option value="${c}">${c}</option>`);
  $("#latents").addEventListener("click", (ev) => {
    const th = ev.target.closest("th");
    if (th) {
      state.dir = state.sort === th.dataset.key ? -state.dir : -1;
      state.sort = th.dataset.key;
      renderTable();
      return;
    }
    const tr = ev.target.closest("tr[data-id]");
    if (tr && ev.target.tagName !== "A") location.hash = `latent-${tr.dataset.id}`;
  });
  document.querySelectorAll(".filters input, .filters select").forEach((el) => el.addEventListener("input", renderTable));
  window.addEventListener("hashchange", route);
  renderSummary();
  renderDigits();
  renderTable();
  route();
  document.body.dataset.ready = "1";
});
