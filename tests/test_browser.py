"""The MLflow UI as a person uses it: `mlflow ui` on 127.0.0.1, headless Chromium opens the
experiment, both runs are listed, and ticking them and pressing Compare shows their metric.

Screenshots of the run list and the compare view are kept as test artefacts in
``$TEST_ARTIFACTS/browser/`` (pytest's temporary folder when unset; the path is printed).
Chromium and chromedriver are Debian's packages, which `.ci/run` installs. Locally the test
is skipped when they are absent; in CI (``CI`` set) that is a failure, never a skip.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from browser_support import artifacts_folder, chromium, chromium_options, start_chromium
from pipeline.tracking import Tracker
from server_support import free_port, stop, wait_for_health

pytestmark = pytest.mark.browser

BIN = Path(sys.executable).parent
EXPERIMENT = "ui"
#: (run name as `<experiment>-<variant>-<hash8>`, short enough for the UI's name column; lr_g;
#: final SSIM): two runs that differ in one param and one metric.
RUNS = [("ui-unet-1111aaaa", 1e-4, 0.61), ("ui-unet-2222bbbb", 5e-4, 0.74)]
UI_START_TIMEOUT_S = 120
PAGE_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, str, list[str]]:
    """A fresh SQLite store holding the two runs; (uri, experiment id, run ids)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'mlflow.db'}"
    run_ids = []
    for name, lr_g, ssim in RUNS:
        tracker = Tracker.start(uri, EXPERIMENT, name)
        tracker.log_params({"model": {"lr_g": lr_g}})
        for epoch in range(3):
            tracker.log_metrics({"G_total": 3.0 - epoch}, step=epoch)
        tracker.log_metrics({"ct_to_mri_ssim": ssim})
        tracker.finish()
        run_ids.append(tracker.run_id)
    experiment_id = tracker.client.get_experiment_by_name(EXPERIMENT).experiment_id
    return uri, experiment_id, run_ids


@pytest.fixture(scope="module")
def mlflow_ui(store, tmp_path_factory):
    """`mlflow ui` on a free local port, as the README starts it; its base URL."""
    uri = store[0]
    port = free_port()
    log_path = tmp_path_factory.mktemp("mlflow_ui") / "ui.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_health(base, proc, UI_START_TIMEOUT_S, log_path, "mlflow ui")
        except RuntimeError as err:
            pytest.fail(str(err))
        yield base
    finally:
        stop(proc, group=True)  # the server and its worker, started in their own group


@pytest.fixture(scope="module")
def artifacts_dir(tmp_path_factory) -> Path:
    return artifacts_folder(tmp_path_factory, "browser")


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = chromium()
    driver = start_chromium(driver_path, chromium_options(binary, "1600,1200"))
    try:
        yield driver
    finally:
        driver.quit()


def test_ui_lists_both_runs_and_compares_their_metric(store, mlflow_ui, browser, artifacts_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    _, experiment_id, run_ids = store
    wait = WebDriverWait(browser, PAGE_TIMEOUT_S)
    # The experiment's run table (MLflow 3 opens on its GenAI overview unless asked for runs).
    browser.get(f"{mlflow_ui}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    for name, _, _ in RUNS:
        wait.until(EC.visibility_of_element_located((By.XPATH, f"//a[normalize-space(.)='{name}']")))
    wait.until(EC.visibility_of_element_located((By.XPATH, "//*[normalize-space(.)='2 matching runs']")))
    browser.save_screenshot(str(artifacts_dir / "mlflow_runs.png"))

    row_boxes = browser.find_elements(
        By.CSS_SELECTOR, "input[type=checkbox][aria-label^='Press Space to toggle row selection']")
    assert len(row_boxes) == 2
    for box in row_boxes:
        browser.execute_script("arguments[0].click()", box)  # ag-grid hides the input under its own box
    wait.until(EC.element_to_be_clickable((By.XPATH, "//button[normalize-space(.)='Compare']"))).click()

    wait.until(EC.url_contains("compare-runs"))
    assert all(run_id in browser.current_url for run_id in run_ids)
    wait.until(EC.visibility_of_element_located((By.XPATH, "//*[normalize-space(.)='Comparing 2 Runs from 1 Experiment']")))
    metric_cell = wait.until(EC.presence_of_element_located((By.XPATH, "//*[normalize-space(text())='ct_to_mri_ssim']")))
    # Each run's final SSIM sits in the metrics table beside the metric's name.
    for _, _, ssim in RUNS:
        wait.until(EC.presence_of_element_located((By.XPATH, f"//*[normalize-space(text())='{ssim}']")))
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "model.lr_g" in body and "0.0001" in body and "0.0005" in body
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", metric_cell)
    browser.save_screenshot(str(artifacts_dir / "mlflow_compare.png"))
    print(f"screenshots: {artifacts_dir / 'mlflow_runs.png'} {artifacts_dir / 'mlflow_compare.png'}")
    assert (artifacts_dir / "mlflow_runs.png").stat().st_size > 10_000
