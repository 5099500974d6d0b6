"""The playground (/ui, service/http/playground/) end to end in a real headless browser:
Debian's Chromium driven by Selenium through Debian's chromedriver, against the session's
open server. It uploads a photo, generates, walks between two seeds, and keeps each step's
screenshot under reports/playground/ (and the test's tmp_path), each checked not blank.
What the page shows is compared with the API's own answers for the same input."""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.browser import INSTALL, chromium, wait_for
from tests.conftest import ROOT, require_tool

ARTEFACTS = ROOT / "reports" / "playground"


@pytest.fixture(scope="module")
def server(grpc_servers):
    return grpc_servers[0]


@pytest.fixture(scope="module")
def browser():
    driver = chromium(require_tool("chromium", INSTALL), require_tool("chromedriver", INSTALL))
    yield driver
    driver.quit()


def varied(image: Image.Image, colours: int, spread: float) -> bool:
    """More than `colours` distinct colours and a standard deviation over `spread`: not blank."""
    pixels = np.asarray(image.convert("RGB"))
    return len(np.unique(pixels.reshape(-1, 3), axis=0)) > colours and float(pixels.std()) > spread


def decoded(data_url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


def screenshot(driver, name: str, tmp_path: Path) -> None:
    """The page as it is now, kept as a test artefact, and checked not blank."""
    png = driver.get_screenshot_as_png()
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    (ARTEFACTS / name).write_bytes(png)
    shutil.copy(ARTEFACTS / name, tmp_path / name)
    assert varied(Image.open(io.BytesIO(png)), colours=50, spread=10), f"the screenshot {name} is blank"


def chosen(driver, select: str) -> dict[str, str]:
    """The model the page's `select` names, as the page sends it (nothing when none is chosen)."""
    value = driver.find_element("id", select).get_attribute("value")
    return {"model": value} if value else {}


def test_the_page_and_its_assets_are_served_locally(server):
    page = server.client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {"/ui/playground.js", "/ui/playground.css", "/"} <= set(assets)
    for asset in assets:
        assert asset.startswith("/"), f"an external asset: {asset}"  # offline: nothing from elsewhere
        assert server.client.get(asset).status_code == 200
    for name in ("playground.js", "playground.css"):
        assert not re.search(r"https?://", server.client.get(f"/ui/{name}").text)
    assert server.client.get("/ui/").text == page.text
    assert server.client.get("/ui/../routes.py").status_code == 404
    assert server.client.get("/").status_code == 200  # BentoML's API explorer stays


@pytest.mark.slow
def test_classify_generate_and_interpolate_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    models = server.client.get("/models").json()["models"]
    labels = {label for model in models if model["kind"] == "classifier" for label in model["card"]["labels"]}
    classes = next(model["card"]["classes"] for model in models if model["kind"] == "generator")
    find = browser.find_element
    browser.get(f"{server.url}/ui")
    wait_for(browser, "generate", lambda driver: Select(find("id", "class")).options[1:] and
             Select(find("id", "classifier")).options)
    assert [option.text for option in Select(find("id", "class")).options[1:]] == classes
    assert not find("id", "key-box").is_displayed()  # no keys on this server: no key field

    # a real photo, through the file input
    photo = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(photo)
    find("id", "image").send_keys(str(photo))
    bars = wait_for(browser, "classify", lambda driver: driver.find_elements("css selector", "#bars li"))
    shown = [bar.find_element("class name", "label").text for bar in bars]
    assert len(bars) == 5 and set(shown) <= labels, shown
    # the API's answer for the same file and model: the same labels in order, the same scores as displayed
    answer = server.client.post("/classify", json={"images": [base64.b64encode(photo.read_bytes()).decode()],
                                                   "top_k": 5, **chosen(browser, "classifier")})
    assert answer.status_code == 200, answer.text
    expected = answer.json()["predictions"][0]
    assert shown == [prediction["label"] for prediction in expected]
    for bar, prediction in zip(bars, expected):
        percent = bar.find_element("class name", "score").text
        assert percent.endswith("%") and abs(float(percent[:-1]) - prediction["score"] * 100) <= 0.05 + 1e-9, \
            (percent, prediction)
    assert all(bar.find_element("class name", "bar").size["width"] > 0 for bar in bars[:1])
    card = next(model["card"] for model in models if f"{model['name']}:{model['version']}" ==
                chosen(browser, "classifier")["model"])
    assert find("id", "calibration").text == f"Scores calibrated (temperature {card['temperature']:g})"
    assert answer.json()["abstain"] == [False] and not find("id", "abstain").is_displayed()
    screenshot(browser, "1-classify.png", tmp_path)

    # a threshold over the top score: the page says it abstains, as the API does, its labels still listed
    over = server.client.post("/classify", json={"images": [base64.b64encode(photo.read_bytes()).decode()],
                                                 "abstain_below": 1.0, **chosen(browser, "classifier")})
    assert over.json()["abstain"] == [True]
    find("id", "abstain-below").send_keys("1", Keys.TAB)
    wait_for(browser, "classify", lambda driver: find("id", "abstain").is_displayed())
    bars = wait_for(browser, "classify", lambda driver: driver.find_elements("css selector", "#bars li"))
    assert [bar.find_element("class name", "label").text for bar in bars] == shown
    screenshot(browser, "1-abstain.png", tmp_path)
    find("id", "abstain-below").clear()
    find("id", "abstain-below").send_keys("0", Keys.TAB)
    wait_for(browser, "classify", lambda driver: not find("id", "abstain").is_displayed() and
             driver.find_elements("css selector", "#bars li"))

    # a class, a seed, a count and ψ, and the grid
    Select(find("id", "class")).select_by_visible_text(classes[2])
    for field, value in (("seed", "7"), ("count", "4")):
        find("id", field).clear()
        find("id", field).send_keys(value)
    psi = find("id", "psi")
    before = psi.get_attribute("value")
    psi.send_keys(Keys.LEFT, Keys.LEFT)
    assert float(psi.get_attribute("value")) < float(before)
    assert find("id", "psi-value").text == f"{float(psi.get_attribute('value')):.2f}"
    find("id", "go-generate").click()
    wait_for(browser, "generate", lambda driver: driver.execute_script(
        "const images = [...document.querySelectorAll('#grid img')];"
        "return images.length === 4 && images.every((image) => image.complete && image.naturalWidth > 0);"))
    images = browser.find_elements("css selector", "#grid img")
    assert [image.get_attribute("alt") for image in images] == [classes[2]] * 4
    for image in images:
        assert varied(decoded(image.get_attribute("src")), colours=2, spread=1), "a generated image is uniform"
    # the API's images for the same class, seed, count, ψ and model, pixel for pixel
    answer = server.client.post("/generate", json={"class": classes[2], "seed": 7, "count": 4, "format": "json",
                                                   "psi": float(psi.get_attribute("value")),
                                                   **chosen(browser, "generator")})
    assert answer.status_code == 200, answer.text
    expected = [decoded(f"data:image/png;base64,{image['png']}") for image in answer.json()["images"]]
    assert len(expected) == 4
    for image, api_image in zip(images, expected):
        assert np.array_equal(np.asarray(decoded(image.get_attribute("src"))), np.asarray(api_image))
    screenshot(browser, "2-generate.png", tmp_path)

    # a strip between two seeds, and the frame under the slider as it is dragged
    find("id", "go-interpolate").click()
    slider = wait_for(browser, "interpolate", lambda driver: find("id", "slider").is_enabled() and find("id", "slider"))
    frame = "return document.getElementById('frame').toDataURL('image/png');"
    first = browser.execute_script(frame)
    assert varied(decoded(first), colours=2, spread=1), "the first frame is blank"
    ActionChains(browser).click_and_hold(slider).move_by_offset(slider.size["width"] // 2 - 1, 0).release().perform()
    assert int(slider.get_attribute("value")) > 0
    last = browser.execute_script(frame)
    assert last != first and varied(decoded(last), colours=2, spread=1), "the frame did not follow the slider"
    screenshot(browser, "3-interpolate.png", tmp_path)


@pytest.mark.slow
def test_the_page_asks_for_a_key_when_keys_are_on(grpc_servers, browser):
    from selenium.webdriver.common.keys import Keys

    from tests.conftest import GRPC_KEYS

    locked = grpc_servers[1]
    browser.get(f"{locked.url}/ui")
    find = browser.find_element
    wait_for(browser, "classify", lambda driver: find("id", "key-box").is_displayed())
    assert "401" in find("id", "status").text and "API key" in find("id", "status").text
    find("id", "key").send_keys("wrong", Keys.TAB)
    wait_for(browser, "classify", lambda driver: "refused" in find("id", "status").text)
    find("id", "key").clear()
    find("id", "key").send_keys(GRPC_KEYS[0], Keys.TAB)
    wait_for(browser, "classify", lambda driver: driver.find_elements("css selector", "#classifier option"))
    assert find("id", "status").text == ""
