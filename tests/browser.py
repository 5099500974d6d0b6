"""Headless Chromium for the playground: Debian's `chromium` driven by Selenium through
Debian's `chromedriver`. Shared by tests/test_playground.py and tests/screenshot.py."""

from __future__ import annotations

import os

TIMEOUT = 60  # seconds a step may take: the tiny models on two CPU cores
INSTALL = "apt-get install chromium chromium-driver (Debian's)"


def chromium(chromium_path: str, chromedriver_path: str, width: int = 1280, height: int = 900):
    """A headless Chromium (quit() it) with a `width` x `height` window."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path
    for argument in ("--headless=new", f"--window-size={width},{height}", "--disable-dev-shm-usage",
                     "--disable-gpu", *(["--no-sandbox"] if os.geteuid() == 0 else [])):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver_path))
    driver.set_page_load_timeout(TIMEOUT)
    return driver


def wait_for(driver, section: str, condition):
    """`condition(driver)` once it is truthy; fails at once if the section shows an error."""
    from selenium.webdriver.support.ui import WebDriverWait

    def check(driver):
        error = driver.find_element("css selector", f"#{section} .error").text
        assert not error, f"the playground's {section} section shows: {error}"
        return condition(driver)

    return WebDriverWait(driver, TIMEOUT).until(check)
