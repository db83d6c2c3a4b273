"""Headless Chromium for the browser tests (MLflow UI, reader study): Debian's chromium and
chromedriver, or a skip locally and a failure in CI; and where a test keeps its screenshots."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--no-first-run"]


def chromium() -> tuple[str, str]:
    """Paths of Debian's chromium and chromedriver; skip without them (fail when ``CI`` is set)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    reason = "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run must install them")
    pytest.skip(reason)


def chromium_options(binary: str, window_size: str):
    """Headless Chromium options at ``window_size`` ("W,H")."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROMIUM_FLAGS, f"--window-size={window_size}"]:
        options.add_argument(flag)
    return options


def start_chromium(driver_path: str, options):
    """A Chrome driver on Debian's chromedriver (no Selenium Manager download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver_path), options=options)


def artifacts_folder(tmp_path_factory, name: str) -> Path:
    """``$TEST_ARTIFACTS/<name>`` (pytest's temporary folder when unset), created."""
    root = os.environ.get("TEST_ARTIFACTS")
    folder = Path(root) / name if root else tmp_path_factory.mktemp("artifacts") / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
