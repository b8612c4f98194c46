"""The dashboard in real headless Chromium: every card present, no broken image, a non-blank screenshot."""
import io
import json
import os
import shutil
import tempfile

import pytest
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
                 f"--user-data-dir={profile}", "--window-size=1280,1600"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_renders_in_chromium(tiny_project, browser, tmp_path):
    dest, _ = tiny_project
    features = [r["feature"] for r in json.loads((dest / "data/analysis/feature_report.json").read_text())["features"]]
    browser.get((dest / "plots/dashboard/index.html").as_uri())
    cards = browser.execute_script("return Array.from(document.querySelectorAll('.card')).map(c => c.id)")
    assert cards == [f"feature-{i}" for i in features]
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
    assert len(images) == 4 * len(features)
    broken = [src for src, ok in images if not ok]
    assert not broken, broken
    # the table sorts: click "purity" twice -> descending purity
    rows = lambda: browser.execute_script(  # noqa: E731
        "return Array.from(document.querySelectorAll('#features tbody tr')).map(r => parseFloat(r.cells[3].dataset.v))")
    header = browser.find_elements("css selector", "#features th")[3]
    header.click()
    assert rows() == sorted(rows())
    header.click()
    assert rows() == sorted(rows(), reverse=True)
    # deep link
    browser.get((dest / "plots/dashboard/index.html").as_uri() + f"#feature-{features[-1]}")
    assert browser.execute_script("return document.querySelector(':target').id") == f"feature-{features[-1]}"
    png = browser.get_screenshot_as_png()
    (tmp_path / "dashboard.png").write_bytes(png)
    img = Image.open(io.BytesIO(png)).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100 and len(set(img.getdata())) > 20  # not blank
