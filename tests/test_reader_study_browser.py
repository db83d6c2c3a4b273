"""study.html as a reader uses it: headless Chromium opens the file (no server), every image is
answered by clicking, the answers CSV is downloaded and scored against the key. Answering from
the key scores accuracy 1 (AUC 1); answering the opposite scores 0.

A screenshot of the page is kept in ``$TEST_ARTIFACTS/reader_study/`` (pytest's temporary
folder when unset). Chromium and chromedriver are Debian's packages; locally the test is
skipped without them, in CI (``CI`` set) that is a failure.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pipeline.reader_study.__main__ import main
from pipeline.reader_study.make import StudySettings, make_study
from reader_study_support import train_cgan
from test_browser import _chromium  # Debian's chromium + chromedriver, or skip / fail in CI

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--no-first-run",
                  "--window-size=1400,1000"]
DOWNLOAD_TIMEOUT_S = 30
N = 6


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A conditional-GAN study of 6 + 6 images, with confidences."""
    root = tmp_path_factory.mktemp("reader_study")
    cgan = train_cgan(root, f"sqlite:///{root / 'mlflow.db'}")
    settings = StudySettings(n_per_class=N, pick="random", candidates_per_image=1, display_size=128,
                             display_window=(0.0, 1.0), confidence=True, direction="a_to_b", n_boot=200, seed=5)
    make_study("rs_cgan", cgan["model"], root / "study", settings, real=cgan["real"])
    return root / "study"


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    binary, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)  # no Selenium Manager download
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def artifacts_dir(tmp_path_factory) -> Path:
    root = os.environ.get("TEST_ARTIFACTS")
    folder = Path(root) / "reader_study" if root else tmp_path_factory.mktemp("artifacts") / "reader_study"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def answer_every_image(browser, reader: str, answer_of) -> None:
    """Click an answer and confidence 5 for every image, as a reader would, then type the name."""
    from selenium.webdriver.common.by import By

    for item in browser.find_elements(By.CSS_SELECTOR, "section.item"):
        image_id = item.get_attribute("data-image-id")
        for name, value in (("answer", answer_of(image_id)), ("confidence", "5")):
            box = item.find_element(By.CSS_SELECTOR, f'input[name="{name}-{image_id}"][value="{value}"]')
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
            box.click()
    field = browser.find_element(By.ID, "reader")
    field.clear()
    field.send_keys(reader)


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


def test_a_reader_answers_downloads_and_is_scored(study, browser, downloads, artifacts_dir, tmp_path):
    from selenium.webdriver.common.by import By

    key = json.loads((study / "key.json").read_text())
    truth = {entry["image_id"]: entry["truth"] for entry in key["images"]}
    browser.get((study / "study.html").as_uri())
    assert browser.find_element(By.ID, "progress").text == f"0 of {2 * N} answered"
    assert not browser.find_element(By.ID, "download").is_enabled()
    shown = [img.get_attribute("naturalWidth") for img in browser.find_elements(By.CSS_SELECTOR, "section.item img")]
    assert shown == ["128"] * (2 * N)  # every image decoded, at the stated size

    answer_every_image(browser, "Reader One", lambda image_id: truth[image_id])
    assert browser.find_element(By.ID, "progress").text == f"{2 * N} of {2 * N} answered"
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(artifacts_dir / "study_answered.png"))
    right = download(browser, downloads, "Reader_One")

    browser.refresh()  # answers survive a reload of the tab (sessionStorage)
    assert browser.find_element(By.ID, "progress").text == f"{2 * N} of {2 * N} answered"
    opposite = {"real": "fake", "fake": "real"}
    answer_every_image(browser, "contrarian", lambda image_id: opposite[truth[image_id]])
    wrong = download(browser, downloads, "contrarian")

    out = tmp_path / "scores.json"
    assert main(["score", str(study / "key.json"), str(right), str(wrong), "--out", str(out),
                 "--figure", str(artifacts_dir / "answers_grid.png")]) == 0
    scores = json.loads(out.read_text())
    one, other = scores["readers"]["Reader One"], scores["readers"]["contrarian"]
    assert one["accuracy"]["value"] == 1.0 and one["auc"]["value"] == 1.0
    assert other["accuracy"]["value"] == 0.0 and other["auc"]["value"] == 0.0
    assert other["fakes_taken_for_real"]["value"] == 1.0
    print(f"screenshots: {artifacts_dir}")
