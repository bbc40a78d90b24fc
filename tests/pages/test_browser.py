"""The pages in a real browser (Debian's chromium, headless) against real servers with the tiny
model: the playground ranks, the Swagger UI calls the API, and no page asks another host."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Literal

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from tests.pages.conftest import API_KEY
from tests.support.browser import Browser, console_errors, foreign, requested_urls, screenshot, wait
from tests.support.proxy import PREFIX, Proxy
from tests.support.server import TINY, Server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LABELS = ["dog", "cat", "car", "bird", "pizza"]  # the page's defaults
TEMPLATE = "a photo of a {}."


def ranking(driver: Browser, result_id: str, count: int) -> list[tuple[str, float]]:
    """The ranked rows a result shows, as (name, percent), once `count` are there."""
    rows = wait(driver).until(
        lambda d: (
            (r := d.find_elements(By.CSS_SELECTOR, f"#{result_id} .ranking li"))
            and len(r) == count
            and r
        )
    )
    return [(row.find_element(By.CLASS_NAME, "name").text.strip(), percent(row)) for row in rows]


def percent(row: WebElement) -> float:
    text = row.find_element(By.CLASS_NAME, "pct").text
    assert text.endswith("%"), text
    return float(text[:-1])


def assert_ranked(rows: list[tuple[str, float]]) -> None:
    shown = [p for _, p in rows]
    assert shown == sorted(shown, reverse=True), rows
    # each shown to 0.1%: the rounding of n rows moves the sum by at most n x 0.05
    assert abs(sum(shown) - 100) <= 0.05 * len(shown) + 1e-9, rows


def answered(driver: Browser) -> str:
    return wait(driver).until(lambda d: d.find_element(By.ID, "answered").text)


def operation(driver: Browser, path: str) -> WebElement | Literal[False]:
    """Swagger UI's block for one operation, found by the path it shows (False until rendered)."""
    blocks = [
        b
        for b in driver.find_elements(By.CSS_SELECTOR, ".opblock")
        if b.find_element(By.CSS_SELECTOR, ".opblock-summary-path").text.strip() == path
    ]
    assert len(blocks) <= 1, path
    return blocks[0] if blocks else False


def upload(driver: Browser, input_id: str, *paths: Path) -> None:
    driver.find_element(By.ID, input_id).send_keys("\n".join(str(p) for p in paths))


def test_playground_ranks_labels_for_an_uploaded_image(
    browser: Browser, server: Server, images: list[Path]
):
    browser.get(server.url + "/")
    mode = wait(browser).until(lambda d: d.find_element(By.ID, "api-mode").text)
    with server.client() as c:
        has_classify = "/classify" in c.get("/schema/openapi.json").json()["paths"]
    assert mode == ("labels via /classify" if has_classify else "labels via /rank")
    # no broken-image box before an image is chosen, the image once it is
    assert not browser.find_element(By.ID, "classify-preview").is_displayed()
    upload(browser, "classify-file", images[0])
    assert browser.find_element(By.ID, "classify-preview").is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#classify-form button[type=submit]").click()

    rows = ranking(browser, "classify-result", len(LABELS))
    assert_ranked(rows)
    assert sorted(name for name, _ in rows) == sorted(LABELS)
    line = answered(browser)
    assert f"Answered by {TINY} in" in line and " ms " in line
    # the bars are the API's probabilities for the templated labels
    image = {"img_blob": base64.b64encode(images[0].read_bytes()).decode()}
    with server.client() as c:
        if has_classify:
            body = {"images": [image], "labels": LABELS, "templates": [TEMPLATE]}
            predictions = c.post("/classify", json=body).json()["predictions"][0]
            expected = {p["label"]: p["probability"] for p in predictions}
        else:
            body = {
                "queries": [image],
                "candidates": [{"text": TEMPLATE.format(label)} for label in LABELS],
            }
            probabilities = c.post("/rank", json=body).json()["probabilities"][0]
            expected = dict(zip(LABELS, probabilities, strict=True))
    for name, shown in rows:
        assert shown == pytest.approx(expected[name] * 100, abs=0.051), name
    screenshot(browser, "playground")

    # readable on a phone: nothing wider than the screen
    browser.set_window_size(390, 844)
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth"
    )
    browser.execute_script("document.getElementById('classify-result').scrollIntoView()")
    screenshot(browser, "playground-phone")

    assert console_errors(browser) == []

    # a URL the server refuses: its message, naming the field, is shown
    browser.execute_script("document.getElementById('classify-file').value = ''")
    browser.find_element(By.ID, "classify-url").send_keys("http://127.0.0.1:9/cat.png")
    browser.find_element(By.ID, "classify-template").send_keys(Keys.ENTER)  # submits the form
    error = wait(browser).until(lambda d: d.find_element(By.ID, "error").text)
    assert error.startswith("400: ") and "img_uri" in error and "SSRF" in error
    (refused,) = console_errors(browser)  # chromium logs the 400 itself, nothing else
    assert "status of 400" in refused

    assert foreign(requested_urls(browser), server.url) == []


def test_playground_searches_images_by_keyboard_behind_a_prefix(
    browser: Browser, proxy: Proxy, images: list[Path]
):
    browser.get(proxy.url)
    tab = browser.find_element(By.ID, "tab-classify")
    tab.send_keys(Keys.ARROW_RIGHT)
    assert browser.switch_to.active_element.get_attribute("id") == "tab-search"
    assert browser.find_element(By.ID, "panel-search").is_displayed()
    assert not browser.find_element(By.ID, "panel-classify").is_displayed()

    upload(browser, "search-files", *images)
    query = browser.find_element(By.ID, "search-query")
    query.clear()
    query.send_keys("a red square", Keys.ENTER)

    rows = ranking(browser, "search-result", len(images))
    assert_ranked(rows)
    assert sorted(name for name, _ in rows) == sorted(p.name for p in images)
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#search-result img")
    assert len(thumbs) == len(images) and all(
        browser.execute_script("return arguments[0].naturalWidth", t) == 96 for t in thumbs
    )
    assert f"Answered by {TINY} in" in answered(browser)
    screenshot(browser, "playground-search")

    urls = requested_urls(browser)
    assert any(u.endswith(PREFIX + "rank") for u in urls)
    assert foreign(urls, proxy.origin, PREFIX) == []
    assert console_errors(browser) == []


def test_playground_asks_for_the_key_and_keeps_it_in_memory_only(
    browser: Browser, keyed_server: Server, images: list[Path]
):
    browser.get(keyed_server.url + "/")
    key = wait(browser).until(
        lambda d: (k := d.find_element(By.ID, "api-key")).is_displayed() and k
    )
    assert browser.switch_to.active_element == key
    key.send_keys("wrong-key", Keys.ENTER)
    wait(browser).until(lambda d: d.find_element(By.ID, "api-key").is_displayed())
    key.clear()
    key.send_keys(API_KEY, Keys.ENTER)
    # the models list, refused before, now loads with the key
    wait(browser).until(
        lambda d: (
            TINY
            in [o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, "#model option")]
        )
    )
    upload(browser, "classify-file", images[1])
    browser.find_element(By.CSS_SELECTOR, "#classify-form button[type=submit]").click()
    assert_ranked(ranking(browser, "classify-result", len(LABELS)))

    kept = browser.execute_script(
        "return [localStorage.length, sessionStorage.length, document.cookie]"
    )
    assert kept == [0, 0, ""]
    assert foreign(requested_urls(browser), keyed_server.url) == []


def test_swagger_ui_lists_the_operations_and_tries_encode_behind_a_prefix(
    browser: Browser, proxy: Proxy
):
    browser.get(proxy.url + "schema/swagger")
    ops = wait(browser).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock .opblock-summary-path")
    )
    paths = {op.text.strip() for op in ops}
    assert {"/encode", "/rank", "/v1/embeddings", "/models", "/healthz"} <= paths

    encode = wait(browser).until(lambda d: operation(d, "/encode"))
    encode.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait(browser).until(lambda d: encode.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
    body = wait(browser).until(
        lambda d: encode.find_element(By.CSS_SELECTOR, "textarea.body-param__text")
    )
    body.send_keys(Keys.CONTROL, "a")
    body.send_keys(Keys.DELETE)
    body.send_keys('[{"text": "a photo of a dog"}]')
    encode.find_element(By.CSS_SELECTOR, ".execute").click()

    status = wait(browser).until(
        lambda d: encode.find_element(
            By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status"
        )
    )
    assert status.text.strip().startswith("200")
    request_url = encode.find_element(By.CSS_SELECTOR, ".request-url pre").text.strip()
    assert request_url == proxy.url + "encode"
    shown = encode.find_element(
        By.CSS_SELECTOR, ".live-responses-table tbody .response-col_description pre"
    )
    (vector,) = json.loads(shown.text)
    assert len(vector) > 1 and all(isinstance(x, float) for x in vector)
    screenshot(browser, "swagger")

    assert foreign(requested_urls(browser), proxy.origin, PREFIX) == []
    assert console_errors(browser) == []


def test_swagger_ui_authorizes_with_the_key_and_calls_the_api(
    browser: Browser, keyed_server: Server
):
    browser.get(keyed_server.url + "/schema/swagger")
    wait(browser).until(lambda d: d.find_element(By.CSS_SELECTOR, ".btn.authorize")).click()
    dialog = wait(browser).until(lambda d: d.find_element(By.CSS_SELECTOR, ".modal-ux"))
    dialog.find_element(By.CSS_SELECTOR, "input").send_keys(API_KEY)
    dialog.find_element(By.CSS_SELECTOR, "button.authorize").click()
    dialog.find_element(By.CSS_SELECTOR, "button.btn-done").click()

    models = wait(browser).until(lambda d: operation(d, "/models"))
    models.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait(browser).until(lambda d: models.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
    models.find_element(By.CSS_SELECTOR, ".execute").click()
    status = wait(browser).until(
        lambda d: models.find_element(
            By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status"
        )
    )
    assert status.text.strip().startswith("200")
    shown = models.find_element(
        By.CSS_SELECTOR, ".live-responses-table tbody .response-col_description pre"
    )
    assert json.loads(shown.text)["models"][0]["spec"] == TINY
    kept = browser.execute_script("return [localStorage.length, sessionStorage.length]")
    assert kept == [0, 0]
    assert foreign(requested_urls(browser), keyed_server.url) == []
