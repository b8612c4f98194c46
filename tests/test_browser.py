"""The feature browser in real headless Chromium, opened from file:// with no network: sorting and filtering
change the rows a person sees, every card's images load, and each card agrees with the table and latents.csv."""
import csv
import io
import os
import shutil
import tempfile
import time

import pytest

pytestmark = pytest.mark.e2e  # real DVC on the shared tiny project: `make test-fast` leaves these out
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium/chromium-driver missing: .ci/run must apt-get install them")
        pytest.skip("Debian chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 f"--user-data-dir={profile}", "--window-size=1400,1400"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def visible_ids(b):
    return b.execute_script("return Array.from(document.querySelectorAll('#latents tbody tr')).map(r => +r.dataset.id)")


def column(b, key):
    return b.execute_script(
        f"return Array.from(document.querySelectorAll('#latents tbody td[data-key=\"{key}\"]')).map(td => td.textContent)")


def test_browser_sorts_filters_and_cards_agree(tiny_project, browser, tmp_path):
    dest, _ = tiny_project
    page = dest / "plots/dashboard/vit-block1/index.html"
    rows = {int(r["latent"]): r for r in csv.DictReader(open(dest / "data/analysis/vit-block1/latents.csv"))}
    live = [u for u, r in rows.items() if r["dead"] == "False"]
    browser.get(page.as_uri())
    assert browser.execute_script("return document.body.dataset.ready") == "1"
    assert sorted(visible_ids(browser)) == sorted(live)  # default filter: every live latent, dead ones hidden

    # sorting: click "firing rate" -> descending rates; click again -> ascending; the row order changes
    before = visible_ids(browser)
    browser.find_element("css selector", '#latents th[data-key="rate"]').click()
    desc = visible_ids(browser)
    rates = [float(rows[u]["firing_rate"]) for u in desc]
    assert rates == sorted(rates, reverse=True) and desc != before
    browser.find_element("css selector", '#latents th[data-key="rate"]').click()
    asc = [float(rows[u]["firing_rate"]) for u in visible_ids(browser)]
    assert asc == sorted(asc)

    # filtering: a digit keeps exactly the latents whose hypothesis names it (or, without one, whose mode it is)
    digit = next(int(r["hypothesis_classes"].split()[0]) for r in rows.values() if r["hypothesis_classes"])
    browser.execute_script(f"const s = document.getElementById('f-class'); s.value = '{digit}';"
                           "s.dispatchEvent(new Event('input'))")
    want = {u for u in live if str(digit) in rows[u]["hypothesis_classes"].split()
            or (not rows[u]["hypothesis_classes"] and int(rows[u]["n_test"]) and int(rows[u]["mode_label"]) == digit)}
    assert set(visible_ids(browser)) == want and 0 < len(want) < len(live)
    browser.execute_script("const s = document.getElementById('f-class'); s.value = '';"
                           "s.dispatchEvent(new Event('input'));"
                           "const g = document.getElementById('f-grade'); g.value = 'none'; g.dispatchEvent(new Event('input'))")
    assert set(visible_ids(browser)) == {u for u in live if rows[u]["grade"] == "none"}
    browser.execute_script("const g = document.getElementById('f-grade'); g.value = '';"
                           "g.dispatchEvent(new Event('input'));"
                           "const q = document.getElementById('f-search'); q.value = String(arguments[0]);"
                           "q.dispatchEvent(new Event('input'))", live[0])
    assert visible_ids(browser) == [live[0]]
    browser.execute_script("const q = document.getElementById('f-search'); q.value = ''; q.dispatchEvent(new Event('input'))")

    # every live latent's card: its images load, and its numbers agree with the table row and the CSV
    for u in live:
        browser.execute_script(f"location.hash = 'latent-{u}'")
        card = browser.execute_script(
            "const c = document.getElementById('card'); const f = k => (c.querySelector(`[data-field=${k}]`) || {}).textContent;"
            "return {id: c.dataset.latent, n: f('n'), rate: f('rate'), grade: f('grade'), classes: f('classes'),"
            " purity: f('purity')}")
        assert card["id"] == str(u)
        r = rows[u]
        assert card["n"] == r["n_test"] and card["grade"] == r["grade"]
        assert card["classes"] == (", ".join(r["hypothesis_classes"].split()) or "–")
        # the card rounds for display: compare numbers, not strings (JS and Python round ties differently)
        assert abs(float(card["rate"].rstrip("%")) - 100 * float(r["firing_rate"])) <= 0.005 + 1e-9
        shown_purity = float(card["purity"].split(", ")[1].split(" ")[0])
        assert abs(shown_purity - float(r["purity"])) <= 0.005 + 1e-9
        cells = browser.execute_script(
            f"const tr = document.querySelector('#latents tr[data-id=\"{u}\"]');"
            "return tr ? Object.fromEntries(Array.from(tr.cells).map(td => [td.dataset.key, td.textContent])) : null")
        assert cells["n"] == card["n"] and cells["rate"] == card["rate"] and cells["grade"] == card["grade"]
        if int(r["n_test"]):
            browser.execute_script("document.querySelectorAll('#card img').forEach(i => i.loading = 'eager')")
            imgs = browser.execute_script(
                "return Array.from(document.querySelectorAll('#card img')).map(i => [i.getAttribute('src'), i.complete])")
            # its examples and input pattern, and its best partner's examples in the other site (the universality
            # stage's partners script): 3 images, each checked to load below
            links = browser.execute_script(
                "return Array.from(document.querySelectorAll('#card .partner a')).map(a => a.getAttribute('href'))")
            assert len(imgs) == 3 and len(links) == 1 and links[0].startswith("../mlp-hidden/index.html#latent-"), imgs
            partner_link = links[0]
            for _ in range(50):
                ok = browser.execute_script(
                    "return Array.from(document.querySelectorAll('#card img')).every(i => i.complete && i.naturalWidth > 0)")
                if ok:
                    break
                time.sleep(0.1)
            assert ok, imgs
            n_caps = browser.execute_script("return document.querySelectorAll('#card .cap').length")
            assert n_caps >= min(int(r["n_test"]), 1)
            assert browser.execute_script("return document.querySelectorAll('#card svg.chart').length") == 3
    # a partner link opens that latent's card in the other site's browser
    browser.get((page.parent / partner_link.split("#")[0]).resolve().as_uri() + "#" + partner_link.split("#")[1])
    assert browser.execute_script("return document.getElementById('card').dataset.latent") == partner_link.split("-")[-1]
    browser.get(page.as_uri())
    # the per-digit view and the baselines panel are there
    assert browser.execute_script("return document.querySelectorAll('#digits .digit').length") == 10
    assert "neurons" in browser.execute_script("return document.getElementById('summary-body').textContent")
    png = browser.get_screenshot_as_png()
    (tmp_path / "browser.png").write_bytes(png)
    img = Image.open(io.BytesIO(png)).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100 and len(img.getcolors(maxcolors=1 << 16) or []) > 20  # not blank


def test_dvc_plots_page_draws_every_chart_offline(tiny_project, browser, tmp_path):
    """`dvc plots show` with the project's template: every Vega chart renders in Chromium with no network (the
    browser runs with background networking off and the page loads no external script)."""
    import subprocess

    dest, env = tiny_project
    out = tmp_path / "plots"
    subprocess.run(["dvc", "plots", "show", "-o", str(out)], cwd=dest, env=env, check=True, capture_output=True)
    browser.get((out / "index.html").as_uri())
    for _ in range(100):
        charts = browser.execute_script(
            "return Array.from(document.querySelectorAll('div[id]')).filter(d => d.id && !d.id.includes('img'))"
            ".map(d => { const c = d.querySelector('svg, canvas'); const r = c ? c.getBoundingClientRect() : null;"
            " return [d.id, !!c && r.width > 100 && r.height > 50]; })")
        if charts and all(ok for _, ok in charts):
            break
        time.sleep(0.1)
    assert browser.execute_script("return typeof vegaEmbed") == "function"
    assert len(charts) >= 9 and all(ok for _, ok in charts), charts


def test_index_page_links_every_site_to_its_browser(tiny_project, browser):
    """plots/index.html, opened offline: one row per model and per site with its numbers, and each site's link
    opens that site's feature browser, which links back."""
    import json

    dest, _ = tiny_project
    browser.get((dest / "plots/index.html").as_uri())
    sites = browser.execute_script(
        "return Array.from(document.querySelectorAll('#sites tbody tr')).map(r => "
        "[r.cells[0].textContent, r.cells[6].textContent, r.querySelector('a').href])")
    assert [s for s, _, _ in sites] == ["mlp-hidden", "vit-block1"]
    for name, fvu, _ in sites:
        want = json.loads((dest / f"metrics/sites/{name}/summary.json").read_text())["fvu"]
        assert float(fvu) == pytest.approx(want, abs=5e-5)
    models = browser.execute_script("return Array.from(document.querySelectorAll('#models tbody tr')).length")
    assert models == 2
    browser.find_element("link text", "vit-block1").click()
    assert browser.execute_script("return document.body.dataset.ready") == "1"
    assert "vit (vit), site block1" in browser.find_element("css selector", "h1").text
    browser.find_element("link text", "All models and sites").click()
    assert browser.current_url.endswith("/plots/index.html")
