"""The report and the demo page in headless Chromium: images load, filters work, no console errors.

Needs Debian's chromium and chromium-driver and the selenium package (.ci/run installs all three).
Without them the tests skip, saying what is missing, except under CI (CI set), where they fail.
"""

import io
import json
import os
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from sevlm_jax.inference import predictor as inference
from sevlm_jax.evaluation import report
from sevlm_jax.evaluation import trace_files
from sevlm_jax.inference import serve
from sevlm_jax.data import records
from test_report import EVIL, edited_predictions  # predictions with every outcome, hostile text
from helpers import demo_root, trained_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WINDOW = (1280, 1600)


def _require_browser():
  missing = []
  try:
    import selenium  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    missing.append("the selenium package (pip install -e '.[test]')")
  if not CHROMIUM:
    missing.append("chromium (apt-get install chromium)")
  if not CHROMEDRIVER:
    missing.append("chromedriver (apt-get install chromium-driver)")
  if missing:
    reason = "the browser tests need " + ", ".join(missing)
    if os.environ.get("CI"):
      pytest.fail(f"{reason}; CI is set, where .ci/run installs them")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def driver():
  _require_browser()
  from selenium import webdriver  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.chrome.service import Service  # pylint: disable=import-outside-toplevel
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--disable-extensions", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
    options.add_argument(arg)
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  # An explicit driver path: Selenium Manager (which would download a driver) is not used.
  browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  browser.set_page_load_timeout(60)
  yield browser
  browser.quit()


def console_errors(browser, allowed=()):
  """SEVERE console entries since the last call, less those containing an allowed text."""
  return [e for e in browser.get_log("browser")
          if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]


def assert_screenshot(browser, path):
  """Saves a screenshot and checks that it is a PNG of the window with something drawn on it."""
  png = browser.get_screenshot_as_png()
  path.write_bytes(png)
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
  with Image.open(io.BytesIO(png)) as im:
    pixels = np.asarray(im.convert("RGB"), np.float32)
  assert pixels.shape[1] == WINDOW[0] and pixels.shape[0] > 600
  assert pixels.std() > 10  # not a blank page


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
  """A report of the shared tiny run with right, wrong and no-majority cards and hostile text."""
  run = trained_run(tmp_path_factory)
  workdir = tmp_path_factory.mktemp("browser_report")
  shutil.copy(run / "metrics.jsonl", workdir / "metrics.jsonl")
  results = json.loads((run / "metrics_test.json").read_text())
  preds, _ = edited_predictions(json.loads((run / "predictions_test.json").read_text()))
  path = report.write_report(str(workdir), "test", results, preds,
                             str(demo_root(tmp_path_factory) / "ready"), worst_k=4,
                             traces=trace_files.load_traces(str(run / "trace_test.npz")))
  return path, preds


def test_report_shows_every_image_without_console_errors(driver, report_page, tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel
  path, preds = report_page
  driver.get_log("browser")  # start from a clean console
  driver.get("file://" + path)
  assert driver.title == "SEVLM evaluation: test"
  images = driver.execute_script(
      "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);")
  assert len(images) == len(preds) + 4  # the gallery and the 4 worst cases
  assert all(complete and width > 0 for _, complete, width in images), images
  gallery = driver.find_elements(By.CSS_SELECTOR, "#gallery .item")
  assert len(gallery) == len(preds) and all(item.is_displayed() for item in gallery)
  assert driver.find_element(By.ID, "shown").text == str(len(preds))
  # The hostile explanation is shown as text; none of its markup ran.
  assert any(EVIL in item.text for item in gallery)
  assert driver.execute_script("return document.querySelectorAll('script').length") == 1
  assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart polyline")) >= 3
  assert_screenshot(driver, tmp_path / "report.png")
  assert console_errors(driver) == []


def test_clicking_a_word_draws_its_attention_over_the_thumbnail(driver, report_page, tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel
  path, _ = report_page
  driver.get_log("browser")
  driver.get("file://" + path)
  card = next(c for c in driver.find_elements(By.CSS_SELECTOR, "#gallery .item")
              if c.find_elements(By.CSS_SELECTOR, ".w"))
  grid = int(card.get_attribute("data-grid"))
  overlay = card.find_element(By.CSS_SELECTOR, "svg.attn")
  words = card.find_elements(By.CSS_SELECTOR, ".w")
  assert not overlay.is_displayed()
  words[0].click()
  assert overlay.is_displayed() and "on" in words[0].get_attribute("class")
  rects = overlay.find_elements(By.TAG_NAME, "rect")
  assert len(rects) == grid * grid
  assert max(float(r.get_attribute("fill-opacity")) for r in rects) == 0.75  # the map's peak
  thumb = card.find_element(By.TAG_NAME, "img")
  assert overlay.rect == thumb.rect  # drawn exactly over the thumbnail
  if len(words) > 1:  # another word moves the selection
    words[1].click()
    assert "on" not in words[0].get_attribute("class") and overlay.is_displayed()
    words[1].click()
  else:
    words[0].click()
  assert not overlay.is_displayed()
  card.find_element(By.CSS_SELECTOR, "details.vad summary").click()
  assert len(card.find_elements(By.CSS_SELECTOR, "svg.vad-chart polyline")) == 3
  words[0].click()
  assert_screenshot(driver, tmp_path / "report_attention.png")
  assert console_errors(driver) == []


def test_report_filters(driver, report_page):
  from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.support.ui import Select  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=import-outside-toplevel
  path, _ = report_page
  driver.get("file://" + path)

  def visible():
    return [i for i in driver.find_elements(By.CSS_SELECTOR, "#gallery .item") if i.is_displayed()]

  def settled(count: int) -> None:
    """Waits for the page's filter to have run: the browser may deliver the change event after
    select_by_value returns (seen on a loaded 2-core machine), and reading the cards meanwhile
    mixes the old and the new filter."""
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "shown").text == str(count))

  every = driver.find_elements(By.CSS_SELECTOR, "#gallery .item")
  outcome = Select(driver.find_element(By.ID, "f-outcome"))
  for value in ("right", "wrong", "none"):
    outcome.select_by_value(value)
    want = [i for i in every if i.get_attribute("data-outcome") == value]
    settled(len(want))
    assert want and visible() == want, value
    assert driver.find_element(By.ID, "shown").text == str(len(want))
  outcome.select_by_value("right")
  settled(sum(i.get_attribute("data-outcome") == "right" for i in every))
  right = visible()
  predicted = Select(driver.find_element(By.ID, "f-pred"))
  predicted.select_by_value(right[0].get_attribute("data-pred"))  # both filters hold together
  both = [i for i in right if i.get_attribute("data-pred") == right[0].get_attribute("data-pred")]
  settled(len(both))
  assert visible() == both
  Select(driver.find_element(By.ID, "f-true")).select_by_value("none")
  settled(0)
  assert visible() == [] and driver.find_element(By.ID, "shown").text == "0"
  for select_id in ("f-outcome", "f-pred", "f-true"):
    Select(driver.find_element(By.ID, select_id)).select_by_value("all")
  settled(len(every))
  assert visible() == every
  assert console_errors(driver) == []


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
  run = trained_run(tmp_path_factory)
  predictor = inference.Predictor.from_workdir(str(run), batch_size=1)
  srv = serve.make_server(predictor, port=0)
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{srv.server_address[1]}/"
  srv.shutdown()
  srv.server_close()
  thread.join(timeout=10)


def test_demo_page_predicts_a_chosen_image(driver, demo_server, tmp_path, tmp_path_factory):
  from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=import-outside-toplevel
  picture = tmp_path / "painting.png"
  test = records.load_split(demo_root(tmp_path_factory) / "ready", "test")
  Image.fromarray(test[0]["image"]).resize((96, 96)).save(picture)
  driver.get_log("browser")
  driver.get(demo_server)
  driver.find_element(By.ID, "file").send_keys(str(picture))
  WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "result").is_displayed())
  assert driver.find_element(By.ID, "emotion").text
  assert driver.find_element(By.ID, "error").text == ""
  rows = driver.find_elements(By.CSS_SELECTOR, "#bars .row")
  assert len(rows) == 9
  shares = [float(r.find_element(By.CLASS_NAME, "p").text.rstrip("%")) for r in rows]
  assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 100) < 1
  assert driver.execute_script("return document.getElementById('preview').naturalWidth") == 96
  assert_screenshot(driver, tmp_path / "demo.png")
  assert console_errors(driver) == []

  # A chosen emotion: the page asks again and shows its explanation.
  from selenium.webdriver.support.ui import Select  # pylint: disable=import-outside-toplevel
  Select(driver.find_element(By.ID, "emotion-choice")).select_by_value("fear")
  WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "emotion").text == "fear")
  WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#words .word"))
  # Clicking a word draws its attention map over the picture; clicking it again hides it.
  word = driver.find_elements(By.CSS_SELECTOR, "#words .word")[0]
  assert not driver.find_element(By.ID, "overlay").is_displayed()
  word.click()
  overlay = driver.find_element(By.ID, "overlay")
  assert overlay.is_displayed() and "on" in word.get_attribute("class")
  cells = len(overlay.find_elements(By.TAG_NAME, "rect"))  # one per image patch, a square grid
  assert cells >= 4 and round(cells ** 0.5) ** 2 == cells
  assert overlay.size["width"] == driver.find_element(By.ID, "preview").size["width"]
  assert len(driver.find_elements(By.CSS_SELECTOR, "#vad-chart polyline")) == 3
  assert_screenshot(driver, tmp_path / "demo_attention.png")
  word.click()
  assert not driver.find_element(By.ID, "overlay").is_displayed()
  assert console_errors(driver) == []
  Select(driver.find_element(By.ID, "emotion-choice")).select_by_value("")

  # Not an image: the server's reason is shown, and the next image works again.
  notes = tmp_path / "notes.png"
  notes.write_text("not a picture")
  driver.find_element(By.ID, "file").send_keys(str(notes))
  WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "error").text)
  assert "not an image" in driver.find_element(By.ID, "error").text
  assert not driver.find_element(By.ID, "result").is_displayed()
  # The browser reports the refused request itself; nothing else may appear.
  assert console_errors(driver, allowed=("status of 400",)) == []
  driver.find_element(By.ID, "file").send_keys(str(picture))
  WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "result").is_displayed())
  assert driver.find_element(By.ID, "error").text == ""
