"""study.html as a reader uses it, in headless Chromium from the file (no server): one image at a
time at full size, zoom by wheel / key / button, window / level by drag and preset (read back
from the canvas's pixels), answers by keyboard, the warning before leaving with answers not
downloaded, resuming after a reload and after closing the tab, the download scored against the
key, "clear my answers" for the next reader on a shared computer, and no network request.

Screenshots are kept in ``$TEST_ARTIFACTS/reader_study/`` (pytest's temporary folder when unset).
Chromium and chromedriver are Debian's packages; locally the test is skipped without them, in
CI (``CI`` set) that is a failure.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from browser_support import artifacts_folder, chromium, chromium_options, start_chromium
from pipeline.reader_study.__main__ import main
from pipeline.reader_study.draw import draw_truths
from pipeline.reader_study.make import StudySettings, make_study
from reader_study_support import SIZE, train_cgan

pytestmark = pytest.mark.browser

DOWNLOAD_TIMEOUT_S = 30
DIALOG_TIMEOUT_S = 5
N = 8
NARROW = (0.25, 0.75)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A conditional-GAN study of 8 images with confidences; a secret whose coins show both classes
    and a real image first (so the zoom and window screenshots show anatomy, not a 1-epoch fake)."""
    root = tmp_path_factory.mktemp("reader_study")
    cgan = train_cgan(root, f"sqlite:///{root / 'mlflow.db'}")
    settings = StudySettings(n_images=N, pick="random", candidates_per_image=1, display_window=(0.0, 1.0),
                             confidence=True, direction="a_to_b", window_presets={"narrow": NARROW})
    secret = next(s for s in (hashlib.sha256(f"browser-{i}".encode()).hexdigest() for i in range(100))
                  if draw_truths(N, s)[0] == "real" and 3 <= draw_truths(N, s).count("real") <= 5)
    make_study("rs_cgan", cgan["model"], root / "study", settings, real=cgan["real"], secret=secret)
    return root / "study"


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    binary, driver_path = chromium()
    options = chromium_options(binary, "1400,1000")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    # The performance log records every request and every dialog the page opens; chromedriver
    # accepts a "leave this page?" (beforeunload) dialog itself, the log shows that it was asked.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": True})
    driver = start_chromium(driver_path, options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def artifacts_dir(tmp_path_factory) -> Path:
    return artifacts_folder(tmp_path_factory, "reader_study")


def text(browser, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def press(browser, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    for key in keys:
        ActionChains(browser).send_keys(key).perform()


def canvas_grey(browser) -> np.ndarray:
    """The canvas's own pixels (its backing store, before the browser scales it on screen)."""
    values = browser.execute_script(
        "const c = document.getElementById('image');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "const grey = []; for (let i = 0; i < d.length; i += 4) { grey.push(d[i]); } return grey;")
    return np.array(values, dtype=np.int64).reshape(SIZE, SIZE)


def expected_grey(page_pixels: str, low: float, high: float) -> np.ndarray:
    """What the stated window makes of the page's 16-bit pixels, computed here."""
    stored = np.frombuffer(base64.b64decode(page_pixels), dtype="<u2").reshape(SIZE, SIZE) / 65535
    return np.rint(np.clip((stored - low) / (high - low), 0, 1) * 255).astype(np.int64)


def window_of(browser) -> tuple[float, float]:
    viewer = browser.find_element("id", "viewer")
    return float(viewer.get_attribute("data-window-low")), float(viewer.get_attribute("data-window-high"))


EVENTS: list[dict] = []


def browser_events(browser) -> list[dict]:
    """Every DevTools event logged so far (the log is drained on reading, so it is kept here)."""
    EVENTS.extend(json.loads(entry["message"])["message"] for entry in browser.get_log("performance"))
    return EVENTS


def reload_asks_to_leave(browser) -> bool:
    """Reload the page as a reader would; True when the browser asked "leave this page?" first."""
    from selenium.webdriver.support.ui import WebDriverWait

    before = len(browser_events(browser))
    browser.execute_script("window.beforeReload = true; setTimeout(function () { location.reload(); }, 10);")
    WebDriverWait(browser, DIALOG_TIMEOUT_S).until(
        lambda b: b.execute_script("return !window.beforeReload && document.readyState === 'complete'"))
    return any(event["method"] == "Page.javascriptDialogOpening" and event["params"]["type"] == "beforeunload"
               for event in browser_events(browser)[before:])


def download(browser, downloads: Path, reader: str) -> Path:
    from selenium.webdriver.common.by import By

    button = browser.find_element(By.ID, "download")
    assert button.is_enabled()
    button.click()
    target = downloads / f"answers_{reader}.csv"
    deadline = time.monotonic() + DOWNLOAD_TIMEOUT_S
    while not target.is_file() or list(downloads.glob("*.crdownload")):
        assert time.monotonic() < deadline, f"no download of {target.name}: {sorted(p.name for p in downloads.iterdir())}"
        time.sleep(0.2)
    return target


def start(browser, code: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = browser.find_element(By.ID, "reader")
    field.clear()
    field.send_keys(code, Keys.ENTER)
    assert browser.find_element(By.ID, "study").is_displayed()


def test_a_reader_reads_with_keyboard_zoom_and_window_resumes_and_is_scored(study, browser, downloads,
                                                                           artifacts_dir, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    key = json.loads((study / "key.json").read_text())
    truth = [entry["truth"] for entry in key["images"]]
    pixels = [image["pixels"] for image in json.loads(re.search(
        r'<script id="study-data" type="application/json">(.*?)</script>', (study / "study.html").read_text(),
        re.S).group(1))["images"]]
    browser.get((study / "study.html").as_uri())
    browser.save_screenshot(str(artifacts_dir / "01_start.png"))
    start(browser, "Reader One")
    assert text(browser, "position") == f"Image 1 of {N}" and text(browser, "answered") == f"0 of {N} answered"
    assert not browser.find_element(By.ID, "download").is_enabled()

    # Full size: the image fills the viewer's height (a square image in a wide viewer).
    viewer, canvas = browser.find_element(By.ID, "viewer"), browser.find_element(By.ID, "image")
    fitted = canvas.rect["height"]
    assert fitted == pytest.approx(min(viewer.rect["width"], viewer.rect["height"]), abs=2)
    assert (np.abs(canvas_grey(browser) - expected_grey(pixels[0], 0.0, 1.0)) <= 1).all()
    browser.save_screenshot(str(artifacts_dir / "02_image_fitted.png"))

    # Zoom: the wheel over the image, the + key, the - button, 0 fits again.
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(viewer), 0, -120).perform()
    assert canvas.rect["height"] == pytest.approx(fitted * 1.25, rel=0.01)
    press(browser, "+")
    assert canvas.rect["height"] == pytest.approx(fitted * 1.25 ** 2, rel=0.01)
    browser.save_screenshot(str(artifacts_dir / "03_zoomed.png"))
    browser.find_element(By.ID, "zoom-out").click()
    assert canvas.rect["height"] == pytest.approx(fitted * 1.25, rel=0.01)
    press(browser, "0")
    assert canvas.rect["height"] == pytest.approx(fitted, abs=1)

    # Window / level by dragging: left = narrower window, down = higher level; the canvas shows it.
    width_px, height_px = viewer.rect["width"], viewer.rect["height"]
    ActionChains(browser).move_to_element(viewer).click_and_hold().move_by_offset(-300, 100).release().perform()
    low, high = window_of(browser)
    assert high - low == pytest.approx(1 - 300 / width_px, abs=0.01)
    assert (low + high) / 2 == pytest.approx(0.5 + 100 / height_px, abs=0.01)
    assert (np.abs(canvas_grey(browser) - expected_grey(pixels[0], low, high)) <= 1).all()
    assert not (canvas_grey(browser) == expected_grey(pixels[0], 0.0, 1.0)).all()
    browser.save_screenshot(str(artifacts_dir / "04_window_dragged.png"))
    pressed = lambda: [b.get_attribute("aria-pressed") for b in browser.find_elements(By.CSS_SELECTOR, "#presets button")]
    assert pressed() == ["false", "false"]  # a dragged window is no preset
    press(browser, "w")  # presets: W steps to the next ("narrow"), and on round to "as prepared"
    assert window_of(browser) == NARROW and pressed() == ["false", "true"]
    assert (np.abs(canvas_grey(browser) - expected_grey(pixels[0], *NARROW)) <= 1).all()
    press(browser, "w")
    assert window_of(browser) == (0.0, 1.0)

    # Keyboard answers for the first half: R / G, confidence 5, then the next image.
    for position in range(N // 2):
        press(browser, "r" if truth[position] == "real" else "g", "5", Keys.ARROW_RIGHT)
    assert text(browser, "answered") == f"{N // 2} of {N} answered"
    assert text(browser, "position") == f"Image {N // 2 + 1} of {N}"
    press(browser, Keys.ARROW_LEFT)
    assert text(browser, "position") == f"Image {N // 2} of {N}"
    assert browser.find_element(By.CSS_SELECTOR, f'#answers button[data-answer="{truth[N // 2 - 1]}"]') \
        .get_attribute("aria-pressed") == "true"

    # Leaving with answers not downloaded asks first; after the reload the reader is back where they were.
    assert reload_asks_to_leave(browser)
    # The page resumes in its closing script; a CI run once read the study screen before it showed
    # (text ''), so wait for it (a page that never resumes still fails here or below).
    WebDriverWait(browser, DIALOG_TIMEOUT_S).until(lambda b: text(b, "position") != "")
    assert text(browser, "position") == f"Image {N // 2} of {N}"
    assert text(browser, "answered") == f"{N // 2} of {N} answered" and "Welcome back" in text(browser, "status")
    # Closing the tab ends its session: a new tab starts at the reader code, the same code resumes.
    first_tab = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get((study / "study.html").as_uri())
    assert browser.find_element(By.ID, "start").is_displayed()
    start(browser, "Reader One")
    assert text(browser, "answered") == f"{N // 2} of {N} answered"
    press(browser, Keys.ARROW_RIGHT)
    for position in range(N // 2, N):
        press(browser, "r" if truth[position] == "real" else "g", "5", Keys.ARROW_RIGHT)
    assert text(browser, "answered") == f"{N} of {N} answered"
    browser.save_screenshot(str(artifacts_dir / "05_all_answered.png"))
    right = download(browser, downloads, "Reader_One")
    assert not reload_asks_to_leave(browser)  # everything downloaded: no question

    # Clear my answers (shared computer): confirmed, the same code then starts empty.
    browser.find_element(By.ID, "clear").click()
    browser.switch_to.alert.accept()
    assert browser.find_element(By.ID, "start").is_displayed()
    start(browser, "Reader One")
    assert text(browser, "answered") == f"0 of {N} answered"

    # A second reader answers every image the wrong way, by clicking.
    browser.find_element(By.ID, "clear").click()
    browser.switch_to.alert.accept()
    start(browser, "contrarian")
    for position in range(N):
        opposite = "fake" if truth[position] == "real" else "real"
        browser.find_element(By.CSS_SELECTOR, f'#answers button[data-answer="{opposite}"]').click()
        browser.find_element(By.CSS_SELECTOR, '#confidence button[data-confidence="4"]').click()
        browser.find_element(By.ID, "next").click()
    wrong = download(browser, downloads, "contrarian")

    out = tmp_path / "scores.json"
    assert main(["score", str(study / "key.json"), str(right), str(wrong), "--out", str(out),
                 "--figure", str(artifacts_dir / "answers_grid.png")]) == 0
    scores = json.loads(out.read_text())
    one, other = scores["readers"]["Reader One"], scores["readers"]["contrarian"]
    assert one["accuracy"]["value"] == 1.0 and one["auc"]["value"] == 1.0
    assert other["accuracy"]["value"] == 0.0 and other["auc"]["value"] == 0.0

    # Nothing was requested but the page itself (and the download's blob).
    browser.switch_to.window(first_tab)
    urls = {e["params"]["request"]["url"] for e in browser_events(browser) if e["method"] == "Network.requestWillBeSent"}
    assert urls and all(re.match(r"(file|blob|data):", url) for url in urls), urls
    print(f"screenshots: {artifacts_dir}")
