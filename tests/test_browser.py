"""The drawing page in a real headless Chromium: strokes drawn with a mouse and a finger on the
canvas, and the prediction the page shows. `.ci/run` installs Debian's chromium and
chromedriver: in CI (CI=true) their absence fails the test; elsewhere it skips, saying how to
install them."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from .conftest import serving

pytestmark = pytest.mark.slow

PAD = 280  # the canvas side in pixels; MNIST's 28 px digits are replayed 10x larger
WAIT_SECONDS = 60


def find(program: str, debian_path: str) -> str:
    found = shutil.which(program) or (debian_path if os.path.exists(debian_path) else None)
    if found is None:
        reason = (f"{program} is missing: apt-get install -y chromium chromium-driver "
                  "(.ci/run does this)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def page_url(trained_workdir):
    with serving(trained_workdir) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = find("chromium", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=860,720",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options,
                              service=Service(find("chromedriver", "/usr/bin/chromedriver")))
    driver.set_page_load_timeout(WAIT_SECONDS)
    yield driver
    driver.quit()


def draw(driver, strokes: list[list[tuple[float, float]]], pointer: str = "mouse") -> None:
    """Draw polylines given in canvas pixels, with a mouse or a finger (W3C actions)."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.by import By

    pad = driver.find_element(By.ID, "pad")
    kind = interaction.POINTER_TOUCH if pointer == "touch" else interaction.POINTER_MOUSE
    actions = ActionBuilder(driver, mouse=PointerInput(kind, pointer), duration=5)
    for stroke in strokes:
        # Offsets are from the canvas centre, as W3C actions measure them.
        x, y = stroke[0]
        actions.pointer_action.move_to(pad, x - PAD / 2, y - PAD / 2).pointer_down()
        for x, y in stroke[1:]:
            actions.pointer_action.move_to(pad, x - PAD / 2, y - PAD / 2)
        actions.pointer_action.pointer_up()
    actions.perform()


def shown_prediction(driver, strokes: int) -> tuple[str, list[float], list[float]]:
    """Once the picture after `strokes` strokes is answered: the digit the page shows, the
    percentages printed beside the bars, and how full each bar is drawn (0 to 1)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_SECONDS).until(lambda d: d.find_element(
        By.ID, "result").get_attribute("data-strokes") == str(strokes))
    digit = driver.find_element(By.ID, "digit").text
    printed = [float(e.text.rstrip("%")) / 100
               for e in driver.find_elements(By.CSS_SELECTOR, "#bars .pct")]
    drawn = driver.execute_script(
        "return [...document.querySelectorAll('#bars .bar')].map((bar) =>"
        "  bar.querySelector('.fill').getBoundingClientRect().width /"
        "  bar.querySelector('.track').getBoundingClientRect().width);")
    return digit, printed, drawn


def clear(driver) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "clear").click()


def handwritten(digit: str) -> list[list[tuple[float, float]]]:
    """Strokes a person might draw for a few digits, in canvas pixels."""
    if digit == "1":
        return [[(150, 45), (146, 100), (141, 160), (137, 235)]]
    if digit == "0":
        return [[(140 + 62 * math.sin(t), 140 - 92 * math.cos(t))
                 for t in np.linspace(0, 2 * math.pi, 40)]]
    if digit == "7":
        return [[(80, 55), (140, 52), (205, 55), (175, 120), (145, 180), (125, 235)]]
    raise ValueError(digit)


def replayed(image: np.ndarray) -> list[list[tuple[float, float]]]:
    """A real MNIST digit redrawn as strokes: one horizontal stroke per run of inked pixels in
    each row, 10x larger, as a pen sweeping across the digit would leave it."""
    strokes = []
    for row, pixels in enumerate(image.reshape(28, 28) > 0.5):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], pixels.astype(int), [0]])))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            y = 10 * row + 5
            strokes.append([(10 * start + 5, y), (10 * (stop - 1) + 5, y)])
    return strokes


def test_digits_drawn_on_the_page_are_recognised(browser, page_url, mnist, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(page_url)
    assert browser.find_element(By.ID, "model").text.startswith("mnist_mlp: 784-128-64-10")

    for digit, pointer in (("1", "mouse"), ("0", "mouse"), ("7", "touch")):
        clear(browser)
        strokes = handwritten(digit)
        draw(browser, strokes, pointer)
        shown, printed, drawn = shown_prediction(browser, len(strokes))
        assert shown == digit, f"drew a {digit} with a {pointer}, the page says {shown}"
        assert len(printed) == 10 and sum(printed) == pytest.approx(1.0, abs=0.01)
        assert int(np.argmax(printed)) == int(digit)
        assert drawn == pytest.approx(printed, abs=0.01)  # bars as long as their numbers

    screenshot = tmp_path / "serve.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")
    with Image.open(screenshot) as image:
        assert image.size[0] >= 800
        assert np.asarray(image.convert("L")).std() > 20

    images, labels = mnist.test_images[:10], mnist.test_labels[:10]
    right = 0
    for image, label in zip(images, labels, strict=True):
        clear(browser)
        strokes = replayed(image)
        draw(browser, strokes)
        shown, _, _ = shown_prediction(browser, len(strokes))
        right += shown == str(label)
    print(f"replayed MNIST digits recognised on the page: {right}/10")
    assert right >= 9


def test_clear_empties_the_pad_and_the_answer(browser, page_url):
    from selenium.webdriver.common.by import By

    browser.get(page_url)
    draw(browser, handwritten("1"))
    shown_prediction(browser, 1)
    clear(browser)
    assert browser.find_element(By.ID, "digit").text == ""
    ink = browser.execute_script(
        "const c = document.getElementById('pad');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let dark = 0; for (let i = 0; i < d.length; i += 4) dark += d[i] < 128; return dark;")
    assert ink == 0

