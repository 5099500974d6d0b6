"""The README's playground screenshot (docs/playground.png) from the demo's own models:
`make screenshot` runs this after training the quick models if they are absent, as `make
demo` does. It publishes them into a throwaway BentoML home, serves them as the demo does
(`bentoml serve`, on a free loopback port), and drives the page in headless Chromium
(tests/browser.py): a Fashion-MNIST test image classified, a grid generated, a walk between
two seeds with the slider three quarters of the way. The page is cropped to its content."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from tests.browser import INSTALL, chromium, wait_for
from tests.conftest import ROOT, Server

PHOTO_CLASS = "Ankle boot"  # a test-set image of it, shown at 4x
GENERATED_CLASS, SEED, COUNT = "Sneaker", "7", "4"


def sample_image(folder: Path) -> Path:
    from training.data import load_dataset

    test = load_dataset("fashion-mnist", split="test", per_class=1, seed=0)
    image = test.images[test.class_names.index(PHOTO_CLASS) == test.labels][0][..., 0]
    path = folder / "ankle-boot.png"
    Image.fromarray(image).resize((112, 112), Image.NEAREST).save(path)
    return path


def drive(driver, url: str, photo: Path) -> bytes:
    """The page after classify, generate and interpolate, as a PNG cropped to its height."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    find = driver.find_element
    driver.get(f"{url}/ui")
    wait_for(driver, "generate", lambda _: Select(find("id", "class")).options[1:] and
             Select(find("id", "classifier")).options)
    find("id", "image").send_keys(str(photo))
    wait_for(driver, "classify", lambda _: driver.find_elements("css selector", "#bars li"))
    Select(find("id", "class")).select_by_visible_text(GENERATED_CLASS)
    for field, value in (("seed", SEED), ("count", COUNT)):
        find("id", field).clear()
        find("id", field).send_keys(value)
    find("id", "go-generate").click()
    wait_for(driver, "generate", lambda _: driver.execute_script(
        "const images = [...document.querySelectorAll('#grid img')];"
        f"return images.length === {COUNT} && images.every((image) => image.complete && image.naturalWidth > 0);"))
    find("id", "go-interpolate").click()
    slider = wait_for(driver, "interpolate", lambda _: find("id", "slider").is_enabled() and find("id", "slider"))
    # a click lands in the slider's middle: drag a quarter further
    ActionChains(driver).click_and_hold(slider).move_by_offset(slider.size["width"] // 4, 0).release().perform()
    height = driver.execute_script(  # the content's bottom and its margin (the page itself is the window's height)
        "return Math.ceil(Math.max(...[...document.body.children].map((e) => e.getBoundingClientRect().bottom))) + 16;")
    page = Image.open(io.BytesIO(driver.get_screenshot_as_png()))
    out = io.BytesIO()
    page.crop((0, 0, page.width, min(height, page.height))).save(out, "PNG", optimize=True)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", default="models/classifier",
                        help="the demo's classifier (training.classifier --quick)")
    parser.add_argument("--generator", default="models/generator", help="the demo's generator (training.gan --quick)")
    parser.add_argument("--out", default="docs/playground.png")
    args = parser.parse_args(argv)
    tools = {tool: shutil.which(tool) for tool in ("chromium", "chromedriver")}
    if not all(tools.values()):
        sys.exit(f"{', '.join(tool for tool, path in tools.items() if not path)} missing: {INSTALL}")
    with tempfile.TemporaryDirectory(prefix="diptych-screenshot-") as tmp:
        env = {key: value for key, value in os.environ.items() if not key.startswith("DIPTYCH_")}
        env.update(BENTOML_HOME=str(Path(tmp) / "home"), BENTOML_DO_NOT_TRACK="true", TF_CPP_MIN_LOG_LEVEL="3")
        subprocess.run([sys.executable, "-m", "training.publish", args.classifier, args.generator], env=env, cwd=ROOT,
                       check=True)
        server, driver = Server(env, Path(tmp) / "server.log", grpc=False), None
        try:
            server.wait("/readyz")
            driver = chromium(tools["chromium"], tools["chromedriver"])
            Path(args.out).write_bytes(drive(driver, server.url, sample_image(Path(tmp))))
        finally:
            if driver is not None:
                driver.quit()
            server.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
