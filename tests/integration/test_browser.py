"""A real browser on the real MLflow UI: after a tiny pipeline run against `mlflow server`
(`stfn servers start`), headless Chromium (Debian's `chromium` + `chromium-driver`, installed here
when missing) opens the registered model `stfn-moving-digits`, sees the `champion` alias, opens the
run and sees its test metrics, and saves screenshots (to docs/screenshots/ with
`make docs-screenshots`, else to the test's temp folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from teamlib import LEARNING_DIGITS, free_port, stfn_cmd

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
LEARNS = LEARNING_DIGITS  # with STFN_SCREENSHOTS: a run that learns, for the pictures in the README


def _ensure_chromium(need) -> None:
    """Debian's chromium and chromium-driver, installed by the test setup when missing (as root,
    with apt-get); otherwise the test fails under CI, is skipped elsewhere, saying what to install."""
    if Path(CHROMIUM).exists() and Path(DRIVER).exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        need(
            f"{CHROMIUM} / {DRIVER} missing and cannot be installed here (needs root and apt-get)",
            "install them with `apt-get install chromium chromium-driver` (as root, Debian/Ubuntu)",
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"apt-get install chromium chromium-driver failed:\n{done.stderr[-2000:]}"


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1600,1000")
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def _tidy(driver, scroll_to: str | None = None) -> None:
    """For the pictures only: close MLflow's assistant side panel, scroll to a section."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label]"):
        if "close" in (button.get_attribute("aria-label") or "").lower() and button.is_displayed():
            button.click()
            break
    if scroll_to:
        hits = driver.find_elements(By.XPATH, f"//*[starts-with(normalize-space(text()), '{scroll_to}')]")
        if hits:
            driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", hits[0])


def _wait_for_text(driver, *texts: str, timeout: float = 90) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def seen(d):
        body = d.find_element(By.TAG_NAME, "body").text
        return body if all(t in body for t in texts) else False

    return WebDriverWait(driver, timeout).until(seen)


@pytest.mark.slow
def test_the_mlflow_ui_shows_the_champion_and_the_runs_metrics(tmp_path, write_tiny_params, need):
    _ensure_chromium(need)
    shots = Path(os.environ["STFN_SCREENSHOTS"]).resolve() if os.environ.get("STFN_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    write_tiny_params(tmp_path / "params.yaml", **(LEARNS if os.environ.get("STFN_SCREENSHOTS") else {}))
    mp, pp = free_port(), free_port()
    started = stfn_cmd(tmp_path, {}, "servers", "start", "--mlflow-port", str(mp), "--prefect-port", str(pp))
    try:
        assert started.returncode == 0, started.stderr
        env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mp}", "PREFECT_API_URL": f"http://127.0.0.1:{pp}/api"}
        run = stfn_cmd(tmp_path, env, "run")
        assert run.returncode == 0, run.stderr[-3000:]
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
        champion = client.get_model_version_by_alias("stfn-moving-digits", "champion")
        mlflow_run = client.get_run(champion.run_id)
        accuracy = mlflow_run.data.metrics["test_accuracy"]

        driver = _browser()
        try:
            driver.get(f"http://127.0.0.1:{mp}/#/models/stfn-moving-digits")
            page = _wait_for_text(driver, "stfn-moving-digits", "champion", f"Version {champion.version}")
            assert "decision" in page and "test_accuracy" in page  # the version's tags, as the pipeline set them
            _tidy(driver, "Versions")
            driver.save_screenshot(str(shots / "mlflow-registered-model.png"))
            exp = mlflow_run.info.experiment_id
            driver.get(f"http://127.0.0.1:{mp}/#/experiments/{exp}/runs/{champion.run_id}")
            page = _wait_for_text(driver, "test_accuracy", "test_macro_f1", "val_accuracy")
            assert str(accuracy)[:5] in page  # the run's metric value, as logged
            _tidy(driver, "Metrics (")
            driver.save_screenshot(str(shots / "mlflow-run.png"))
        finally:
            driver.quit()
    finally:
        stfn_cmd(tmp_path, {}, "servers", "stop")
    assert (shots / "mlflow-registered-model.png").stat().st_size > 10_000
