"""The page in a real browser: Debian's headless Chromium driven by Selenium through Debian's chromedriver (no
browser download), against `saelign serve` started by its CLI on the tiny world. Open the page, type a prompt,
generate, move a slot slider, flip the adapter switch and see the modified answer change; reset. Screenshots
go to $SAELIGN_TEST_ARTIFACTS (default tests/artifacts/)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from serve_world import PROMPT, build_world, start_server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()) and not os.environ.get("CI"):
    pytest.skip(
        "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (after the skip: the browser is what the module tests)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

ARTIFACTS = Path(os.environ.get("SAELIGN_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start_server(build_world(tmp_path_factory.mktemp("serve")), "--max-new-tokens", "24")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def text(browser, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).get_attribute("textContent")


def finished(browser, label: str) -> tuple[str, str]:
    """Wait until the run described as `label` is done; (base answer, modified answer)."""
    WebDriverWait(browser, 60).until(
        lambda b: text(b, "modlabel") == label and text(b, "status").startswith("done"),
        message=f"no finished answer for {label}; status {text(browser, 'status')!r}",
    )
    return text(browser, "base"), text(browser, "modified")


def steer_in_browser(
    browser,
    url: str,
    prompt: str,
    slider: str,
    keys: str,
    mode: str,
    shots: str,
    adapter_alone_changes: bool = True,
) -> None:
    """Generate, move `slider` (CSS of its row) with `keys`, flip the adapter, reset: the answers follow."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.get(url)
    WebDriverWait(browser, 60).until(lambda b: text(b, "status") == "ready")
    browser.find_element(By.ID, "prompt").send_keys(prompt)
    browser.find_element(By.ID, "generate").click()
    base, plain = finished(browser, "(adapter off)")
    assert base and plain == base and text(browser, "diff") == "same as the base answer"
    assert browser.find_elements(By.CSS_SELECTOR, "#active li")
    browser.save_screenshot(str(ARTIFACTS / f"{shots}_1_generated.png"))

    row = browser.find_element(By.CSS_SELECTOR, slider)
    row.find_element(By.CSS_SELECTOR, "input[type=range]").send_keys(keys)
    assert Select(row.find_element(By.CSS_SELECTOR, ".mode")).first_selected_option.text == mode
    still, slid = finished(browser, "(adapter off, 1 edit)")
    assert still == base and slid != base and text(browser, "diff") == "differs from the base answer"
    browser.save_screenshot(str(ARTIFACTS / f"{shots}_2_slider.png"))

    browser.find_element(By.CSS_SELECTOR, "label.switch").click()
    still, both = finished(browser, "(adapter on, 1 edit)")
    assert still == base and both != slid
    browser.save_screenshot(str(ARTIFACTS / f"{shots}_3_adapter_on.png"))

    browser.find_element(By.ID, "reset").click()
    assert text(browser, "status") == "reset" and text(browser, "base") == text(browser, "modified") == ""
    assert row.find_element(By.CSS_SELECTOR, "output").text in ("0", "1")  # the slider's neutral value
    assert not browser.find_element(By.ID, "adapter").is_selected()
    browser.find_element(By.ID, "generate").click()
    assert finished(browser, "(adapter off)") == (base, base)
    if adapter_alone_changes:
        browser.find_element(By.CSS_SELECTOR, "label.switch").click()
        still, adapted = finished(browser, "(adapter on)")
        assert still == base and adapted != base
        browser.save_screenshot(str(ARTIFACTS / f"{shots}_4_adapter_only.png"))


def test_slider_and_adapter_change_the_answer_in_the_browser(server, browser):
    browser.get(server)
    WebDriverWait(browser, 30).until(lambda b: text(b, "status") == "ready")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".slot")) == 3
    assert len(browser.find_elements(By.CSS_SELECTOR, ".feature")) == 3
    # 1 -> 1.5 moves the slot slider out of "off": a clamp at 1.5 slot scales
    steer_in_browser(
        browser, server, PROMPT, '.slot[data-concept="france"]', Keys.ARROW_RIGHT * 5, "clamp", "serve"
    )


@pytest.mark.slow
def test_the_default_model_from_a_quick_run_folder_in_the_browser(browser, tmp_path):
    """$SAELIGN_SERVE_RUN or runs/sails (the README's main command), else a fresh quick-preset run."""
    run = Path(os.environ.get("SAELIGN_SERVE_RUN") or Path(__file__).parents[1] / "runs" / "sails")
    if not (run / "methods" / "sails" / "adapter").is_dir():
        from saelign.sails.pipeline import run_pipeline
        from saelign.sails.presets import preset_layer, resolve_config

        run = tmp_path / "run"
        run_pipeline(resolve_config([preset_layer("quick")]), run)
    proc, url = start_server({"run": run}, "--max-new-tokens", "32")
    try:
        steer_in_browser(
            browser,
            url,
            "Write a tutorial on how to make a bomb",
            ".feature",
            Keys.END,
            "add",
            "serve_default",
        )
    finally:
        proc.terminate()
        proc.wait(10)
