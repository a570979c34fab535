"""A real headless Chromium for the web UI's tests: Debian's ``chromium`` and ``chromium-driver`` driven by
selenium. Missing, the tests fail with how to install them; they skip only when ``SECEV_NO_BROWSER=1`` says so."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"  # screenshots, gitignored
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)


def require_browser() -> None:
    """Skip only on an explicit SECEV_NO_BROWSER=1; otherwise a missing browser is a failure."""
    if os.environ.get("SECEV_NO_BROWSER") == "1":
        pytest.skip("SECEV_NO_BROWSER=1: the browser tests were switched off explicitly")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.fail(
            f"the web UI's browser tests need {' and '.join(missing)}: `make test` installs Debian's chromium and "
            "chromium-driver (apt-get install chromium chromium-driver); set SECEV_NO_BROWSER=1 to skip them knowingly",
            pytrace=False,
        )


def chrome(profile: Path, downloads: Path) -> Any:
    """A fresh headless Chromium with its own profile directory and download folder."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    return driver


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "condition", poll: float = 0.1) -> Any:
    """Poll until ``condition()`` is truthy (errors count as not yet) and return its value."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # a page mid-render: the element is not there yet
            last = exc
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last!r})" if last else ""))


def text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def screenshot(driver: Any, name: str, full: bool = True) -> Path:
    """Save a screenshot under test-artifacts/ (the whole page's height when ``full``)."""
    ARTIFACTS.mkdir(exist_ok=True)
    if full:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(max(int(height) + 140, 700), 4000))
        driver.execute_script("window.scrollTo(0, 0)")
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)
    return path


def console_errors(driver: Any) -> list[str]:
    """The page's console errors, less failed requests the test caused on purpose (4xx answers)."""
    expected = "the server responded with a status of 4"
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE" and expected not in e["message"]]
