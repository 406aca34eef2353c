"""The web catalog in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by selenium opens each page of a server over a real batch,
checks the DOM against the catalog (read with plain sqlite3), and saves a screenshot.

Screenshots go to ``tmp_path``; with ``MONO_QUANT_SCREENSHOT_DIR=docs/screenshots`` they
replace the ones the README shows. Without a browser these tests skip with the reason.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.scheduler.web.conftest import JOBS, SCRIPT_NAME

pytestmark = pytest.mark.slow

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def _first(paths: tuple[str, ...], name: str) -> str | None:
    return next((p for p in paths if os.access(p, os.X_OK)), None) or shutil.which(name)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(pip install 'mono-quant[web]')")
    binary, driver = _first(CHROMIUM, "chromium"), _first(DRIVER, "chromedriver")
    if binary is None or driver is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    f"(found chromium={binary}, chromedriver={driver})")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,860", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    try:
        drv = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver),
                               options=options)
    except Exception as e:  # any failure to start the browser is a reason to skip
        pytest.skip(f"headless chromium did not start: {str(e).splitlines()[0]}")
    yield drv
    drv.quit()


@pytest.fixture
def shot(tmp_path):
    folder = Path(os.environ.get("MONO_QUANT_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)

    def save(driver, name: str) -> Path:
        path = folder / f"{name}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot {path}"
        assert path.stat().st_size > 5000  # a rendered page, not an empty image
        return path

    return save


def _css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _click_and_load(driver, element) -> None:
    """Click an element that navigates, then wait for the new page to be loaded.

    ``click()`` returns before the browser leaves the old page, so reading rows straight
    after it races the navigation: the rows found may belong to the old page and go stale
    mid-read (CI saw ``StaleElementReferenceException`` here). Waiting for the old root
    element to go stale, then for ``readyState == complete``, reads the new page only.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    element.click()
    wait = WebDriverWait(driver, 30)
    wait.until(ec.staleness_of(old))
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")


def test_batches_page(browser, web, web_batch, shot):
    browser.get(web + "/")
    [row] = _css(browser, "#batches tr[data-batch-id]")
    assert row.get_attribute("data-jobs") == str(JOBS)
    assert row.get_attribute("data-done") == str(JOBS)
    assert "web-tests" in row.text
    shot(browser, "batches")


def test_batch_page(browser, web, web_batch, shot):
    from selenium.common.exceptions import NoAlertPresentException

    browser.get(web + "/batches/1")
    jobs = web_batch.rows("SELECT id, name, status FROM jobs ORDER BY id")
    rows = _css(browser, "#jobs tr[data-job-id]")
    assert [(int(r.get_attribute("data-job-id")), r.get_attribute("data-status"))
            for r in rows] == [(j["id"], j["status"]) for j in jobs]
    # the markup job name is shown as text, and no script ran
    names = [r.find_element("css selector", "td:nth-child(2)").text for r in rows]
    assert sum(n.startswith(SCRIPT_NAME) for n in names) == 2
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    timeline = _css(browser, "svg.timeline g.row")
    assert [int(g.get_attribute("data-job-id")) for g in timeline] == [j["id"] for j in jobs]
    failed = {int(g.get_attribute("data-job-id")) for g in timeline
              if g.find_elements("css selector", "rect.seg.failed")}
    assert failed == {j["id"] for j in jobs if j["status"] == "failed"}
    shot(browser, "batch")


def test_artifacts_page_filters(browser, web, web_batch, shot):
    from selenium.webdriver.common.by import By

    browser.get(web + "/artifacts")
    ids = [r["id"] for r in web_batch.rows(
        "SELECT id FROM artifacts ORDER BY created_at DESC, id DESC")]
    shown = [int(r.get_attribute("data-artifact-id"))
             for r in _css(browser, "#artifacts tr[data-artifact-id]")]
    assert shown == ids
    shot(browser, "artifacts")
    browser.find_element(By.NAME, "scheme").send_keys("asymmetric")
    browser.find_element(By.NAME, "min_sqnr").send_keys("40")
    _click_and_load(browser, browser.find_element(By.CSS_SELECTOR, "form.filters button"))
    expected = [r["id"] for r in web_batch.rows(
        "SELECT id FROM artifacts WHERE scheme = 'asymmetric' AND weight_sqnr_db >= 40 "
        "ORDER BY created_at DESC, id DESC")]
    shown = [int(r.get_attribute("data-artifact-id"))
             for r in _css(browser, "#artifacts tr[data-artifact-id]")]
    assert shown == expected and 0 < len(expected) < len(ids)
    # sort by a column, filters kept
    _click_and_load(browser, browser.find_element(By.LINK_TEXT, "Size"))
    by_size = [r["id"] for r in web_batch.rows(
        "SELECT id FROM artifacts WHERE scheme = 'asymmetric' AND weight_sqnr_db >= 40 "
        "ORDER BY size_bytes DESC, id DESC")]
    shown = [int(r.get_attribute("data-artifact-id"))
             for r in _css(browser, "#artifacts tr[data-artifact-id]")]
    assert shown == by_size and "order_by=size_bytes" in browser.current_url


def test_artifact_page_chart(browser, web, web_batch, shot):
    [row] = web_batch.rows("SELECT id, storage_key, info FROM artifacts "
                           "WHERE scheme = 'asymmetric' AND mode = 'static'")
    browser.get(web + f"/artifacts/{row['id']}")
    layers = json.loads(row["info"])["metrics"]["layer_weight_sqnr_db"]
    bars = _css(browser, "svg.bars g.bar")
    assert [b.get_attribute("data-label") for b in bars] == list(layers)
    assert [float(b.get_attribute("data-value")) for b in bars] == pytest.approx(
        list(layers.values()))
    widths = [float(b.find_element("css selector", "rect").get_attribute("width"))
              for b in bars]
    assert widths.index(max(widths)) == list(layers.values()).index(max(layers.values()))
    [worst] = _css(browser, "svg.bars g.bar.worst")  # the layer that loses the most
    assert worst.get_attribute("data-label") == min(layers, key=layers.get)
    assert _css(browser, "#path")[0].text == str(web_batch.storage_root / row["storage_key"])
    shot(browser, "artifact")


def test_compare_page_scatter(browser, web, web_batch, shot):
    rows = web_batch.rows("SELECT id, model_source, size_bytes, output_cosine FROM artifacts")
    browser.get(web + "/compare?model=" + quote(rows[0]["model_source"], safe=""))
    points = _css(browser, "#plot-output_cosine circle.point")
    plotted = [r for r in rows if r["output_cosine"] is not None
               and math.isfinite(r["output_cosine"])]
    assert sorted((int(p.get_attribute("data-id")), int(p.get_attribute("data-size")))
                  for p in points) == sorted((r["id"], r["size_bytes"]) for r in plotted)
    marks = {int(p.get_attribute("data-id")): p.get_attribute("data-mark") for p in points
             if p.get_attribute("data-mark")}
    smallest = min(plotted, key=lambda r: (r["size_bytes"], r["id"]))["id"]
    best = max(plotted, key=lambda r: (r["output_cosine"], -r["id"]))["id"]
    expected = ({smallest: "smallest and best"} if smallest == best
                else {smallest: "smallest", best: "best"})
    assert marks == expected
    # a larger size is drawn further right
    by_x = sorted(points, key=lambda p: float(p.get_attribute("cx")))
    sizes = [int(p.get_attribute("data-size")) for p in by_x]
    assert sizes == sorted(sizes)
    shot(browser, "compare")
