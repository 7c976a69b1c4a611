"""A real browser for the UI checks: Debian's headless Chromium driven by Selenium (installed by
the test setup when missing, as root with apt-get)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def ensure_chromium(need) -> None:
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


def check_mlflow_ui(mlflow_url: str, client, shots: Path) -> None:
    """The registered model page shows the champion and the version's tags; the champion's run
    page shows its test metrics, as logged; screenshots of both into `shots`."""
    champion = client.get_model_version_by_alias("stfn-moving-digits", "champion")
    mlflow_run = client.get_run(champion.run_id)
    accuracy = mlflow_run.data.metrics["test_accuracy"]
    driver = _browser()
    try:
        driver.get(f"{mlflow_url}/#/models/stfn-moving-digits")
        page = _wait_for_text(driver, "stfn-moving-digits", "champion", f"Version {champion.version}")
        assert "decision" in page and "test_accuracy" in page  # the version's tags, as the pipeline set them
        _tidy(driver, "Versions")
        driver.save_screenshot(str(shots / "mlflow-registered-model.png"))
        exp = mlflow_run.info.experiment_id
        driver.get(f"{mlflow_url}/#/experiments/{exp}/runs/{champion.run_id}")
        page = _wait_for_text(driver, "test_accuracy", "test_macro_f1", "val_accuracy")
        assert str(accuracy)[:5] in page  # the run's metric value, as logged
        _tidy(driver, "Metrics (")
        driver.save_screenshot(str(shots / "mlflow-run.png"))
    finally:
        driver.quit()
    assert (shots / "mlflow-registered-model.png").stat().st_size > 10_000


def check_prefect_ui(ui_url: str, shots: Path, *expected: str) -> None:
    """The Prefect UI's flow-runs page lists the runs `expected` names (flow names, tags);
    a screenshot of it into `shots`."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By

    driver = _browser()
    try:
        driver.get(f"{ui_url}/runs")
        try:
            _wait_for_text(driver, *expected)
        except TimeoutException:
            body = driver.find_element(By.TAG_NAME, "body").text
            driver.save_screenshot(str(shots / "prefect-monitor-retrain.png"))
            raise AssertionError(f"{ui_url}/runs never showed {expected}; it showed:\n{body[:3000]}") from None
        _tidy(driver, "Items per page")  # the list of runs, not the chart above it
        driver.save_screenshot(str(shots / "prefect-monitor-retrain.png"))
    finally:
        driver.quit()
    assert (shots / "prefect-monitor-retrain.png").stat().st_size > 10_000


def check_tuning_chart(mlflow_url: str, experiment_id: str, study: str, shots: Path) -> None:
    """The tuning experiment's runs in the chart view: the study's parent run opened, its trials'
    curves side by side (val_accuracy among them); a screenshot into `shots` as
    mlflow-tuning-chart.png."""
    from selenium.webdriver.common.by import By

    driver = _browser()
    try:
        driver.get(f"{mlflow_url}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART")
        _wait_for_text(driver, f"study-{study}")
        toggle = driver.find_elements(  # the expander before the parent's name: its trials listed under it
            By.XPATH, f"//*[normalize-space(text())='study-{study}']/preceding::*[self::button][1]"
        )
        assert toggle, "no expander beside the study's parent run"
        toggle[0].click()
        try:
            _wait_for_text(driver, "val_accuracy", f"{study}-trial-")
        except Exception:
            driver.save_screenshot(str(shots / "mlflow-tuning-chart-failed.png"))
            raise AssertionError(driver.find_element(By.TAG_NAME, "body").text[:3000]) from None
        _tidy(driver)
        driver.save_screenshot(str(shots / "mlflow-tuning-chart.png"))
    finally:
        driver.quit()
    assert (shots / "mlflow-tuning-chart.png").stat().st_size > 10_000
