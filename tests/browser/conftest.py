"""A real browser for the page at /ui: Debian's chromium, headless, through its chromedriver.

Nothing is downloaded: selenium is given the chromedriver and the chromium of the system, so
its driver manager has nothing to fetch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DEMO_DIR, run_command
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the networking flags chromium keeps trying to reach the outside, which is slow here.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1100",
)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless chromium for the session, with a fresh profile."""
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/eos-demo packed with --system once per module; its repository folder."""
    eos = tmp_path_factory.mktemp("eos")
    packed = run_command("ersilia_pack", "--model_dir", DEMO_DIR, "--system", "--eos", eos)
    assert packed.returncode == 0, packed.stderr
    return eos / "repository" / "eos-demo"
