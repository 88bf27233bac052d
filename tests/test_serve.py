"""`ladder serve`: a real browser draws digits on the page and reads the answers; bad requests
get one clear error and the server keeps serving."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from mnist_ladder.apps import cli, predict, serve
from mnist_ladder.runs.store import Store, Stores, reference_db_path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# Digits as pen strokes on the 280x280 canvas: lists of (x, y) points, each list one stroke.
STROKES = {
    1: [[(150, 45), (146, 100), (142, 160), (138, 235)]],
    7: [[(70, 55), (140, 55), (215, 55), (180, 115), (150, 175), (125, 240)]],
    0: [
        [(140, 40), (85, 70), (65, 140), (85, 210), (140, 240), (195, 210), (215, 140), (195, 70), (140, 40)]
    ],
}


def drawn_png(digit: int) -> bytes:
    """The same strokes drawn with Pillow, as the canvas sends them: black on white PNG."""
    img = Image.new("RGB", (280, 280), "white")
    pen = ImageDraw.Draw(img)
    for stroke in STROKES[digit]:
        pen.line(stroke, fill="black", width=18, joint="curve")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(trained_step6) -> Iterator[str]:
    """The app over the trained model's store, on a free loopback port, in a background thread."""
    db, _ = trained_step6
    sock = serve.bind("127.0.0.1", 0)
    srv = serve.make_server([db])
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through Debian's chromedriver. Skipped where the browser is missing,
    except under CI, where a missing browser is a failure."""
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        if os.environ.get("CI"):
            pytest.fail(f"CI needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in [
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ]:
        options.add_argument(arg)
    if os.geteuid() == 0:  # Chromium refuses to run as root inside its sandbox
        options.add_argument("--no-sandbox")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def draw(driver, canvas, strokes: list[list[tuple[int, int]]]) -> None:
    """Real input: W3C pointer actions with a mouse, pressed along each stroke."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.interaction import POINTER_MOUSE
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    half_w, half_h = canvas.size["width"] / 2, canvas.size["height"] / 2
    scale = canvas.size["width"] / 280
    for stroke in strokes:
        actions = ActionBuilder(driver, mouse=PointerInput(POINTER_MOUSE, "pen"), duration=60)
        pointer = actions.pointer_action
        (x, y), *rest = stroke
        pointer.move_to(canvas, round(x * scale - half_w), round(y * scale - half_h)).pointer_down()
        for x, y in rest:
            pointer.move_to(canvas, round(x * scale - half_w), round(y * scale - half_h))
        pointer.pointer_up()
        actions.perform()


def test_a_real_browser_draws_digits_and_reads_each_prediction(
    server, browser, trained_step6, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, row = trained_step6
    browser.get(server + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    box = browser.find_element(By.CSS_SELECTOR, f'#models input[value="{row.id}"]')
    assert box.is_selected()  # the best model is ticked by default
    canvas = browser.find_element(By.ID, "pad")
    results = browser.find_element(By.ID, "results")
    for n, (digit, strokes) in enumerate(STROKES.items(), start=1):
        browser.find_element(By.ID, "clear").click()
        draw(browser, canvas, strokes)  # lifting the pen asks for a prediction
        wait.until(lambda d, n=n: results.get_attribute("data-answered") == str(n))
        assert browser.find_element(By.ID, "status").text == ""
        card = results.find_element(By.CSS_SELECTOR, f'.result[data-model="{row.id}"]')
        probs = [float(bar.get_attribute("data-p")) for bar in card.find_elements(By.CSS_SELECTOR, ".bar")]
        assert len(probs) == 10
        assert abs(sum(probs) - 1) < 1e-3
        shown = int(card.find_element(By.CSS_SELECTOR, ".digit").text)
        assert shown == digit, (digit, probs)
        assert shown == max(range(10), key=probs.__getitem__)
        seen = browser.find_element(By.ID, "seen").get_attribute("src")
        assert seen.startswith("data:image/png;base64,")
    # Everything the page loaded came from this server: it works offline.
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith(server + "/") or u.startswith("data:") for u in loaded), loaded
    shot = tmp_path / "serve.png"
    assert browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 0


def test_the_api_lists_the_stores_runs_and_ticks_a_step6_run(server, trained_step6) -> None:
    _, row = trained_step6
    body = httpx.get(server + "/api/models").json()
    assert [m["id"] for m in body["models"]] == [row.id]
    model = body["models"][0]
    assert (model["step"], model["params"], model["protocol"]) == ("step6", row.params, row.protocol)
    assert model["test_acc"] > 95
    assert body["default"] == [row.id]  # a step6 run is ticked beside the best one
    assert body["best"] is None  # a quick check (its protocol says so) is never `best`


def test_the_page_ticks_ladder_predict_best_s_run_first() -> None:
    ref = reference_db_path()
    if not ref.is_file():
        pytest.skip(f"no reference results at {ref}")
    said: list[str] = []
    with Stores([ref]) as stores:
        predict.resolve_run("best", stores, say=said.append)
    best = serve.best_model([ref])
    assert best and best in said[0]  # "... its best run is <id> ..."
    assert serve.default_choice(serve.list_models([ref]), best)[0] == best


def test_bad_requests_get_one_clear_error_and_the_server_keeps_serving(server, trained_step6) -> None:
    _, row = trained_step6
    url = f"{server}/api/predict?model={row.id}"

    def post(content, url=url) -> httpx.Response:
        return httpx.post(url, content=content, headers={"Content-Type": "image/png"}, timeout=30)

    def huge_stream() -> Iterator[bytes]:  # no Content-Length: the server must count itself
        for _ in range(40):
            yield b"\x00" * 100_000

    cases = [
        (post(b"this is not an image"), 400, "not an image"),
        (post(b""), 400, "no image"),
        (post(b"\x89PNG" + b"\x00" * (serve.MAX_UPLOAD + 1)), 413, "2 MB limit"),
        (post(huge_stream()), 413, "2 MB limit"),
        (post(drawn_png(7), url=f"{server}/api/predict?model=no-such-run"), 404, "no-such-run"),
        (post(drawn_png(7), url=f"{server}/api/predict"), 400, "at least one model"),
        (post(drawn_png(7)[:300]), 400, "truncated"),
    ]
    blank = io.BytesIO()
    Image.new("RGB", (280, 280), "white").save(blank, format="PNG")
    cases.append((post(blank.getvalue()), 400, "no digit found"))
    for reply, status, words in cases:
        assert reply.status_code == status, reply.text
        assert words in reply.json()["error"]
    reply = post(drawn_png(7))  # still serving, and still right
    assert reply.status_code == 200
    (answer,) = reply.json()["predictions"]
    assert answer["digit"] == 7
    assert abs(sum(answer["probabilities"]) - 1) < 1e-3


def test_a_damaged_store_is_one_error_and_the_page_still_loads(tmp_path: Path) -> None:
    broken = tmp_path / "ladder.db"
    broken.write_text("not a results store " * 20)

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=serve.create_app([broken]))
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            return await client.get("/api/models"), await client.get("/")

    models, page = asyncio.run(ask())
    assert models.status_code == 500 and str(broken) in models.json()["error"]
    assert page.status_code == 200


def test_ladder_serve_runs_until_ctrl_c(trained_step6, tmp_path: Path) -> None:
    db, row = trained_step6
    package_root = str(Path(serve.__file__).resolve().parents[1])  # this checkout's, not another
    env = {
        **os.environ,
        "MNIST_LADDER_REFERENCE": str(tmp_path / "no-reference"),
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_ladder", "serve", "--db", str(db), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        line = proc.stderr.readline()
        assert line.startswith("serving on http://127.0.0.1:"), line
        base = line.split()[2].rstrip("/")
        assert row.id in httpx.get(base + "/api/models", timeout=30).text
        assert "<canvas" in httpx.get(base + "/", timeout=30).text
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest


def test_ladder_serve_errors_are_one_line(trained_step6, tmp_path: Path, capsys, monkeypatch) -> None:
    db, _ = trained_step6
    monkeypatch.setenv("MNIST_LADDER_REFERENCE", str(tmp_path / "no-reference"))
    taken = serve.bind("127.0.0.1", 0)
    with taken:
        assert cli.main(["serve", "--db", str(db), "--port", str(taken.getsockname()[1])]) == 2
    assert cli.main(["serve", "--db", str(tmp_path / "typo.db")]) != 0
    with Store(tmp_path / "empty.db"):
        pass
    assert cli.main(["serve", "--db", str(tmp_path / "empty.db")]) == 2
    assert cli.main(["serve", "--db", str(db), "--port", "70000"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(e.startswith("ladder: error: ") for e in err), err
    assert "cannot listen" in err[0] and "no results store at" in err[1]
    assert "no finished run" in err[2] and "cannot listen" in err[3]
