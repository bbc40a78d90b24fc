"""Debian's chromium, headless, driven by Selenium through Debian's chromedriver, and its
network log (every URL the pages asked for)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver as Browser
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags chromium reaches for Google's services at start-up
# (and those connections are refused here); none of them may show up in the network log.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts" / "pages"


@contextmanager
def chromium(
    driver_path: str, profile: Path, size: tuple[int, int] = (1100, 1400)
) -> Iterator[Browser]:
    """A fresh headless chromium (new profile) that records its network and console logs."""
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # Selenium Manager must never try to download a browser or driver: both paths are given.
    os.environ["SE_OFFLINE"] = "true"
    profile.mkdir(parents=True, exist_ok=True)
    service = Service(executable_path=driver_path, log_output=str(profile / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    # chromium opens its built-in new-tab page (chrome:// files) at start; leave it, and its
    # entries, before a test looks at what the pages request
    driver.get("about:blank")
    driver.get_log("performance")
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver: Browser) -> list[str]:
    """Every URL the browser requested since the last call (Network.requestWillBeSent)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    return urls


def foreign(urls: list[str], origin: str, prefix: str = "/") -> list[str]:
    """The URLs that left `origin` (or its path prefix); data: and blob: stay in the page."""
    base = urlsplit(origin)

    def inside(parts: SplitResult) -> bool:
        same_origin = (parts.scheme, parts.netloc) == (base.scheme, base.netloc)
        return parts.scheme in ("data", "blob") or (same_origin and parts.path.startswith(prefix))

    return [url for url in urls if not inside(urlsplit(url))]


def console_errors(driver: Browser) -> list[str]:
    """Severe console messages (failed loads, script errors, CSP refusals)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait(driver: Browser, timeout: float = 60) -> WebDriverWait:
    return WebDriverWait(driver, timeout)


def screenshot(driver: Browser, name: str) -> Path:
    """Save the page as test-artifacts/pages/<name>.png (kept after the run)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
