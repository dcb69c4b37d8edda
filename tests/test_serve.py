"""``editseg serve`` as a real server process on localhost, driven by a real HTTP client.

Two server processes start once for this module (the second is the replica of
``test_two_replicas_answer_one_client``); both load the built-in toy-shapes model.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from editseg.masks import decode_rle  # noqa: E402

LIMITS = {"max_upload_bytes": int(0.25 * 2**20), "max_pixels": 300 * 300, "max_expressions": 4, "max_expression_chars": 80, "queue_size": 8}
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(port: int, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable, "-m", "editseg.cli", "serve", "--port", str(port), "--log-level", "warning",
        "--max-upload-mb", str(LIMITS["max_upload_bytes"] / 2**20), "--max-image-pixels", str(LIMITS["max_pixels"]),
        "--max-expressions", str(LIMITS["max_expressions"]), "--max-expression-chars", str(LIMITS["max_expression_chars"]),
        "--queue-size", str(LIMITS["queue_size"]), *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_ready(process: subprocess.Popen, url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}):\n{process.stdout.read()}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not come up")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def servers():
    ports = [_free_port(), _free_port()]
    processes = [_start(port) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for process, url in zip(processes, urls):
            _wait_ready(process, url)
        yield urls
    finally:
        for process in processes:
            _stop(process)


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=60) as session:
        yield session


def _png_bytes(image: Image.Image | np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url_image(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


@pytest.fixture(scope="module")
def examples(client):
    return {e["id"]: e for e in client.get("/api/examples").json()}


def _reference(toy, example_id: str, expression: str) -> np.ndarray:
    from editseg.serve.examples import load_examples

    toy.set_image(load_examples(64)[example_id].image)
    return toy.predict([expression])[0].mask


# -- basics -----------------------------------------------------------------------------------------
def test_health_page_docs_and_examples(client, examples):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["model"] == "toy-shapes" and health["queue"]["capacity"] == 8
    assert health["limits"]["max_expressions"] == 4
    page = client.get("/")
    assert page.status_code == 200 and 'id="expressions"' in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/..%2Fapp.py").status_code == 404  # only a fixed list of files is served
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    segment = spec["paths"]["/api/segment"]["post"]
    assert {"413", "422", "429", "504"} <= set(segment["responses"])
    assert len(examples) == 6 and all(e["width"] == 64 and e["expressions"] for e in examples.values())
    png = client.get("/api/examples/shapes-1.png")
    assert png.headers["content-type"] == "image/png" and Image.open(io.BytesIO(png.content)).size == (64, 64)
    assert client.get("/api/examples/nope.png").status_code == 404


def test_segment_matches_the_python_api(client, examples, toy_segmenter):
    example = examples["shapes-1"]
    png = client.get(example["url"]).content
    expressions = example["expressions"][:3]
    common = {"expressions": "\n".join(expressions), "outputs": "rle,mask_png,overlay_png,maps_png,heatmaps_png"}
    by_upload = client.post("/api/segment", data={**common, "request_id": "up"}, files={"image": ("x.png", png, "image/png")})
    by_name = client.post("/api/segment", data={**common, "example": "shapes-1"}, headers={"X-Request-Id": "named"})
    assert by_upload.status_code == 200 and by_name.status_code == 200, (by_upload.text, by_name.text)
    up, named = by_upload.json(), by_name.json()
    assert up["request_id"] == "up" and named["request_id"] == "named"
    assert named["image"] == {"width": 64, "height": 64, "example": "shapes-1"}
    assert len(up["image"]["sha256"]) == 64
    for a, b, expression in zip(up["results"], named["results"], expressions):
        assert a["expression"] == b["expression"] == expression and a["instruction"] == f"remove {expression}"
        mask = decode_rle(a["mask_rle"])
        assert np.array_equal(mask, decode_rle(b["mask_rle"]))
        assert np.array_equal(mask, _reference(toy_segmenter, "shapes-1", expression))
        assert np.array_equal(np.asarray(_data_url_image(a["mask_png"])) > 0, mask)
        assert a["mask_area"] == mask.sum() and a["size"] == [64, 64]
        ys, xs = np.nonzero(mask)
        assert a["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert _data_url_image(a["overlay_png"]).size == (64, 64)
        assert set(a["maps_png"]) == {"cam", "ram"} and set(a["heatmaps_png"]) == {"cam", "ram"}
        assert _data_url_image(a["maps_png"]["ram"]).mode == "L"
    # switches reach the method: ram mode at threshold 0.5 is the RAM map thresholded
    ram = client.post("/api/segment", data={"example": "shapes-1", "expressions": expressions[0], "mode": "ram",
                                            "outputs": "rle,maps_png"}).json()["results"][0]  # fmt: skip
    toy_segmenter.set_image(Image.open(io.BytesIO(png)))
    expected = toy_segmenter.predict([expressions[0]], toy_segmenter.config.replace(mode="ram"))[0]
    assert np.array_equal(decode_rle(ram["mask_rle"]), expected.mask)


# -- limits: each with its own answer -----------------------------------------------------------
def test_limits_and_malformed_uploads(client, examples):
    scene = np.asarray(Image.open(io.BytesIO(client.get(examples["shapes-2"]["url"]).content)).convert("RGB"))

    def post(data=None, files=None, **kwargs):
        return client.post("/api/segment", data={"expressions": "the star", **(data or {})}, files=files, **kwargs)

    # upload bytes: by Content-Length, and while reading a chunked body
    noise = np.random.default_rng(0).integers(0, 255, (320, 320, 3), dtype=np.uint8)
    big = _png_bytes(noise)
    assert len(big) > LIMITS["max_upload_bytes"]
    answer = post(files={"image": ("big.png", big, "image/png")})
    assert answer.status_code == 413 and "bytes" in answer.json()["detail"]
    boundary = "editsegboundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="expressions"\r\n\r\nthe star\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip

    def chunks():
        for start in range(0, len(body), 16384):
            yield body[start : start + 16384]

    chunked = client.post("/api/segment", content=chunks(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert chunked.status_code == 413
    # image pixels (a small file of a large image)
    wide = _png_bytes(np.zeros((301, 300, 3), np.uint8))
    answer = post(files={"image": ("wide.png", wide, "image/png")})
    assert answer.status_code == 422 and "90,300 pixels" in answer.json()["detail"]
    # expression count, length, emptiness
    assert post({"example": "shapes-2", "expressions": "a\nb\nc\nd\ne"}).status_code == 422
    long = post({"example": "shapes-2", "expressions": "the " + "very " * 20 + "red star"})
    assert long.status_code == 422 and "characters" in long.json()["detail"]
    assert post({"example": "shapes-2", "expressions": " \n "}).status_code == 422
    # malformed uploads: not an image, a truncated PNG, a broken multipart body, no image at all
    junk = post(files={"image": ("x.png", b"\x89PNG\r\n\x1a\n" + os.urandom(300), "image/png")})
    assert junk.status_code == 422 and "image" in junk.json()["detail"]
    truncated = post(files={"image": ("t.png", _png_bytes(scene)[:200], "image/png")})
    assert truncated.status_code == 422
    broken = client.post("/api/segment", content=b"--x\r\nnot multipart", headers={"Content-Type": "multipart/form-data"})
    assert broken.status_code == 400
    assert post({}).status_code == 422  # neither image nor example
    assert post({"example": "shapes-2"}, files={"image": ("a.png", _png_bytes(scene), "image/png")}).status_code == 422
    # nothing names a server path; unknown settings are refused with the reason
    assert post({"example": "../../etc/passwd"}).status_code == 422
    assert "mode" in post({"example": "shapes-2", "mode": "bogus"}).json()["detail"]
    assert post({"example": "shapes-2", "template": "{expression.__class__}"}).status_code == 422
    assert post({"example": "shapes-2", "outputs": "rle,secrets"}).status_code == 422
    # per-request timeout
    slow = post({"example": "shapes-2", "timeout_s": "0.001"})
    assert slow.status_code == 504 and "timeout" in slow.json()["detail"]
    # still healthy and answering afterwards
    assert post({"example": "shapes-2"}).status_code == 200


def test_queue_full_answers_429(server, examples):
    base = np.asarray(Image.open(io.BytesIO(httpx.get(server + examples["shapes-3"]["url"]).content)).convert("RGB"))
    uploads = []
    for n in range(24):  # distinct images: no two requests can share a forward
        image = base.copy()
        image[0, 0] = (n, 0, 0)
        uploads.append(_png_bytes(image))
    statuses: list[tuple[int, dict]] = []
    barrier = threading.Barrier(len(uploads))

    def send(png: bytes) -> None:
        with httpx.Client(base_url=server, timeout=60) as session:
            barrier.wait()
            r = session.post("/api/segment", data={"expressions": "\n".join(examples["shapes-3"]["expressions"][:4])},
                             files={"image": ("s.png", png, "image/png")})  # fmt: skip
            statuses.append((r.status_code, dict(r.headers)))

    threads = [threading.Thread(target=send, args=(png,)) for png in uploads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(code for code, _ in statuses)
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes
    assert all(headers.get("retry-after") == "1" for code, headers in statuses if code == 429)


# -- concurrency ------------------------------------------------------------------------------------
def test_concurrent_clients_get_their_own_answers(server, toy_segmenter):
    from editseg.serve.loadtest import example_requests, run_load

    requests = example_requests(server, 40, prefix="load")
    requests += example_requests(server, 8, upload=True, prefix="upl")
    report = run_load(server, requests, clients=8)
    assert report.errors == [] and len(report.answers) == len(requests)
    references: dict[tuple[str, str], np.ndarray] = {}
    for request in requests:
        key = (request.example, request.expression)
        if key not in references:
            references[key] = _reference(toy_segmenter, *key)
        mask = decode_rle(report.answers[request.request_id]["results"][0]["mask_rle"])
        assert np.array_equal(mask, references[key]), request
    # concurrent requests were served together, several per model turn
    assert max(a["timings"]["batch_requests"] for a in report.answers.values()) > 1


def test_two_replicas_answer_one_client(servers, toy_segmenter):
    """One replica per device behind any load balancer; here: two CPU processes, round-robin."""
    from editseg.serve.loadtest import example_requests, run_load

    pids = {httpx.get(url + "/api/health").json()["pid"] for url in servers}
    assert len(pids) == 2
    requests = example_requests(servers[0], 12, prefix="rep")
    report = run_load(servers, requests, clients=2)
    assert report.errors == []
    for request in requests:
        mask = decode_rle(report.answers[request.request_id]["results"][0]["mask_rle"])
        assert np.array_equal(mask, _reference(toy_segmenter, request.example, request.expression))
    stats = [httpx.get(url + "/api/health").json()["stats"]["requests"] for url in servers]
    assert all(count >= 6 for count in stats), stats


# -- the page in a real headless browser ------------------------------------------------------------
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900")  # fmt: skip


def _browser_paths() -> tuple[str, str]:
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs Chromium and chromedriver (apt-get install -y chromium chromium-driver; .ci/run does)")
    return chromium, driver


def test_page_in_headless_chromium(server, client, examples, tmp_path):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = _browser_paths()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={tmp_path / 'profile'}",):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    image_file = tmp_path / "scene.png"
    image_file.write_bytes(client.get(examples["shapes-1"]["url"]).content)
    expression = examples["shapes-1"]["expressions"][0]

    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        wait = WebDriverWait(browser, 60)
        browser.get(server + "/")
        wait.until(lambda b: "toy-shapes" in b.find_element(By.ID, "model").text)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#examples button")) == 6)
        browser.find_element(By.ID, "image-file").send_keys(str(image_file))
        wait.until(lambda b: b.execute_script("const p = document.getElementById('preview'); return !p.hidden && p.naturalWidth > 0;"))
        box = browser.find_element(By.ID, "expressions")
        box.clear()
        box.send_keys(expression)
        browser.find_element(By.ID, "run").click()
        wait.until(lambda b: b.execute_script(
            "const i = document.querySelector('.result img.overlay'); return !!i && i.complete && i.naturalWidth === 64;"))  # fmt: skip
        cards = browser.find_elements(By.CSS_SELECTOR, ".result")
        assert len(cards) == 1 and expression in cards[0].text
        assert len(cards[0].find_elements(By.CSS_SELECTOR, ".views img")) == 4  # overlay, CAM, RAM, mask
        assert "result(s) in" in browser.find_element(By.ID, "status").text
        cards[0].find_element(By.CSS_SELECTOR, "a.download-mask").click()
        cards[0].find_element(By.CSS_SELECTOR, "a.download-json").click()
        WebDriverWait(browser, 30).until(
            lambda _: {p.suffix for p in downloads.iterdir() if not p.name.endswith(".crdownload")} >= {".png", ".json"})
        # a bigger view for the README: a built-in scene with all its suggested expressions
        browser.find_element(By.CSS_SELECTOR, "#examples button[data-example='shapes-1']").click()
        browser.find_element(By.ID, "run").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".result img.overlay")) == 4)
        wait.until(lambda b: b.execute_script("return [...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0);"))
        shot = tmp_path / "serve.png"
        browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    mask_file = next(p for p in downloads.iterdir() if p.suffix == ".png")
    assert mask_file.name.startswith("scene-00-")
    answer = client.post("/api/segment", data={"example": "shapes-1", "expressions": expression}).json()
    expected = decode_rle(answer["results"][0]["mask_rle"])
    assert np.array_equal(np.asarray(Image.open(mask_file).convert("L")) > 0, expected)
    import json

    record = json.loads(next(p for p in downloads.iterdir() if p.suffix == ".json").read_text())
    assert record["expression"] == expression and np.array_equal(decode_rle(record["mask_rle"]), expected)
    assert Image.open(shot).size[0] >= 1000
    if os.environ.get("EDITSEG_WRITE_SCREENSHOT"):  # refresh the README picture
        (REPO / "docs" / "images" / "serve.png").write_bytes(shot.read_bytes())
