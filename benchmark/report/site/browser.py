"""Headless Chromium for the site, through Selenium and the system's chromedriver (Debian: `apt-get install -y
--no-install-recommends chromium chromium-driver`): the browser tests drive it, and it takes the README's screenshot.

    python -m benchmark.report.site.browser results/site       # writes results/site/overview.png

Selenium is given both binaries' paths, so it never tries to download a browser or a driver."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from core.io import atomic_write_bytes

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver"
SCREENSHOT = "overview.png"


class BrowserUnavailable(RuntimeError):
    """No headless Chromium can be started here; the message says why."""


def _which(names: tuple[str, ...]) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


def chromium(width: int = 1600, height: int = 1000) -> webdriver.Chrome:
    """A headless Chromium whose console messages can be read (driver.get_log("browser"))."""
    browser, driver = _which(BROWSERS), _which(DRIVERS)
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        raise BrowserUnavailable(f"{missing} not on PATH (install: {INSTALL})")
    opts = Options()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    except WebDriverException as e:
        raise BrowserUnavailable(f"{browser} with {driver} did not start: {e.msg}") from e


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """The browser console's errors since the last call (the log is drained by reading it)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def open_page(driver: webdriver.Chrome, page: Path, timeout: float = 30) -> None:
    """Load a page from disk and wait until its scripts ran and every Bokeh figure on it has drawn."""
    driver.get(Path(page).resolve().as_uri())
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.readyState") == "complete")
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(DRAWN) >= d.execute_script(EMBEDDED))


EMBEDDED = "return document.querySelectorAll('[data-root-id]').length"
# Bokeh 3 keeps each root's view in Bokeh.index once embedded and drawn
DRAWN = "return (window.Bokeh && Bokeh.index) ? Object.keys(Bokeh.index).length : 0"


def screenshot(site: Path, out: Path | None = None) -> Path:
    """The overview section of site/index.html as a PNG (default: site/overview.png)."""
    out = Path(out) if out is not None else Path(site) / SCREENSHOT
    driver = chromium()
    try:
        open_page(driver, Path(site) / "index.html")
        width = driver.execute_script("return document.getElementById('overview').scrollWidth")
        driver.set_window_size(max(1000, width + 80), 1000)  # the whole table, not its scrolled part
        atomic_write_bytes(out, driver.find_element(By.ID, "overview-section").screenshot_as_png)
    finally:
        driver.quit()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Screenshot the overview of a built site with headless Chromium.")
    p.add_argument("site", nargs="?", default="results/site", type=Path, help="the site folder (default: results/site)")
    p.add_argument("--out", type=Path, help=f"PNG to write (default: SITE/{SCREENSHOT})")
    args = p.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(f"error: {args.site / 'index.html'} not found: build it with `python run_benchmark.py report`",
              file=sys.stderr)
        return 2
    try:
        print(f"wrote {screenshot(args.site, args.out)}")
    except BrowserUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
