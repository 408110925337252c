"""The HTTP service: answers, refusals (413/422/503/504) that leave it serving, batching, the page."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, make_image_folder, need_extra, own_cache
from torch import nn

from transferkit.cli import main
from transferkit.deploy.batcher import DynamicBatcher, Overloaded

need_extra("fastapi", "serve")
need_extra("uvicorn", "serve")
httpx = need_extra("httpx", "dev")

MAX_BYTES = 100_000
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class ThreadServer:
    """uvicorn in a thread, on a loopback socket bound to a free port (no race for the port)."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        # log_config=None: uvicorn's records reach the root logger, where caplog can read them.
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="info", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny trained run and a server for it: ``(url, run_dir, images)``."""
    from transferkit.deploy.serve import ServeSettings, Service, create_app

    root = tmp_path_factory.mktemp("serve")
    with own_cache(root / "cache"):
        images = make_image_folder(root / "images", classes=("cat", "dog", "owl"), per_class=4, size=24)
        run = root / "run"
        assert main(["train", "--data", str(images), "--out", str(run), *TINY_TRAIN]) == 0
    settings = ServeSettings(max_bytes=MAX_BYTES, max_pixels=50_000_000, timeout=30, max_batch=8, max_wait_ms=20)
    with ThreadServer(create_app(Service.from_run(run), settings)) as server:
        yield server.url, run, images


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few bytes whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def raw_status(url: str, head: bytes, chunks=()) -> int:
    """Send a hand-written request (headers, then ``chunks`` of body) and return the status code."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(head)
        for piece in chunks:
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed before the whole body went out: fine
        reply = b""
        while b"\r\n" not in reply:
            data = s.recv(4096)
            if not data:
                break
            reply += data
    return int(reply.split(b" ", 2)[1])


def first_image(images: Path, cls: str = "cat") -> Path:
    return sorted((images / cls).iterdir())[0]


def test_predict_multipart_raw_and_topk_match_the_cli(served, capsys):
    url, run, images = served
    path = first_image(images, "owl")
    multipart = httpx.post(f"{url}/predict", files={"file": (path.name, path.read_bytes(), "image/png")}, timeout=30)
    assert multipart.status_code == 200, multipart.text
    body = multipart.json()
    assert set(body) >= {"predictions", "model", "ms"} and body["model"] == "resnet18"
    assert len(body["predictions"]) == 3  # top-5 of three classes
    assert set(body["predictions"][0]) == {"label", "index", "prob"}

    raw = httpx.post(f"{url}/predict?topk=2", content=path.read_bytes(), timeout=30).json()
    assert len(raw["predictions"]) == 2
    assert [p["label"] for p in raw["predictions"]] == [p["label"] for p in body["predictions"][:2]]

    capsys.readouterr()
    assert main(["predict", str(run), str(path), "--format", "json", "--quiet"]) == 0
    cli = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert [p["index"] for p in cli] == [p["index"] for p in body["predictions"]]
    assert all(abs(a["prob"] - b["prob"]) < 1e-4 for a, b in zip(cli, body["predictions"]))


def test_limits_refuse_and_the_server_keeps_serving(served, tmp_path, caplog):
    url, _run, images = served
    caplog.set_level(logging.INFO)
    post = lambda **kw: httpx.post(f"{url}/predict", timeout=30, **kw)  # noqa: E731

    # 413 from Content-Length alone: the body is never sent, so it cannot have been read.
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {10**9}\r\n\r\n"
    assert raw_status(url, head.encode()) == 413
    # 413 while streaming a chunked body that has no length up front.
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"%x\r\n%s\r\n" % (16384, b"\0" * 16384)
    assert raw_status(url, head, [piece] * (3 * MAX_BYTES // 16384)) == 413
    assert post(content=b"\0" * (MAX_BYTES + 1)).status_code == 413

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(8000, 8000))  # 64 megapixels claimed, ~100 bytes on disk
    assert bomb.stat().st_size < 200
    refused = post(files={"file": ("bomb.png", bomb.read_bytes(), "image/png")})
    assert refused.status_code == 422 and "too many pixels" in refused.json()["error"]
    assert post(content=png_claiming(100_000, 100_000)).status_code == 422

    marker = "do-not-log-this-body-7d1f"
    text = post(files={"file": ("notes.txt", f"just text {marker}".encode(), "text/plain")})
    assert text.status_code == 422 and "not an image" in text.json()["error"]
    assert post(content=b"").status_code == 422
    assert post(files={"other": ("a.png", b"x", "image/png")}).status_code == 422
    assert post(content=first_image(images).read_bytes(), params={"topk": "0"}).status_code == 422

    assert httpx.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
    assert post(content=first_image(images).read_bytes()).status_code == 200
    assert marker not in caplog.text and "413" in caplog.text  # the access log has the status, not the body


def test_a_thin_image_is_refused_with_422(served):
    """1 x 5,000,000 px in 5 KB: under --max-pixels, but resized it would be gigapixels (was a 500 or an OOM kill)."""
    import io

    from PIL import Image

    url, _run, _images = served
    buffer = io.BytesIO()
    Image.new("L", (5_000_000, 1), 128).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 10_000
    refused = httpx.post(f"{url}/predict", files={"file": ("thin.png", buffer.getvalue(), "image/png")}, timeout=30)
    assert refused.status_code == 422 and "aspect ratio" in refused.json()["error"]
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_healthz_metadata_and_the_page(served):
    url, run, _images = served
    health = httpx.get(f"{url}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["backend"] == "torch"
    meta = httpx.get(f"{url}/metadata", timeout=10).json()
    saved = json.loads((run / "run.json").read_text())
    assert meta["classes"] == ["cat", "dog", "owl"] and meta["model"] == "resnet18"
    assert meta["preprocess"] == saved["preprocess"] and meta["metrics"] == saved["metrics"]
    assert meta["backbone"]["name"] == "resnet18"
    page = httpx.get(url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    assert 'id="file"' in html and "predict" in html
    assert "http://" not in html and "https://" not in html and "<script src" not in html  # nothing from a CDN


class _GatedNet(nn.Module):
    """A model whose forward pass waits until the test opens the gate: requests pile up behind
    it in a known order, so batching and a full queue happen on any machine, at any speed."""

    def __init__(self):
        super().__init__()
        self.entered, self.gate, self.sizes = threading.Event(), threading.Event(), []

    def forward(self, x):
        self.sizes.append(len(x))
        self.entered.set()
        assert self.gate.wait(120), "the test never opened the gate"
        return torch.zeros(len(x), 2)


def _gated_app(deadline=None, **settings):
    from transferkit.data.transforms import Preprocess
    from transferkit.deploy.serve import ServeSettings, Service, create_app

    net = _GatedNet()
    service = Service(net, Preprocess(16, (0.5,) * 3, (0.5,) * 3), ["a", "b"], {"model": {"name": "gated"}},
                      "torch", "gated")
    return create_app(service, ServeSettings(**settings), deadline), net


def _deadline_when(expired: threading.Event):
    """A request deadline that passes when the test says so, not when a clock runs out."""
    async def deadline():
        while not expired.is_set():
            await asyncio.sleep(0.005)
    return deadline


def _until(condition, what: str) -> None:
    """Wait for a state the server reaches by itself (no outcome depends on how long it takes)."""
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def test_queued_requests_share_one_forward_pass(served):
    """One request holds the model; eight more queue behind it and are answered by one forward pass."""
    _url, _run, images = served
    data = first_image(images, "dog").read_bytes()
    app, net = _gated_app(timeout=120, max_batch=8, max_wait_ms=0)
    batcher = app.state.batcher
    with ThreadServer(app) as server, ThreadPoolExecutor(9) as pool:
        post = lambda _: httpx.post(f"{server.url}/predict", content=data, timeout=120).status_code  # noqa: E731
        first = pool.submit(post, 0)
        assert net.entered.wait(120)
        rest = [pool.submit(post, i) for i in range(8)]
        _until(lambda: batcher.waiting == 8, "eight requests queued")
        net.gate.set()
        assert [first.result()] + [r.result() for r in rest] == [200] * 9
        health = httpx.get(f"{server.url}/healthz", timeout=10).json()
    assert net.sizes == [1, 8] and (health["batches"], health["predictions"]) == (2, 9)


def test_deadline_gives_504_and_a_full_queue_503(served):
    """The deadline passes when the test says: after the body arrived and the request is inside the
    forward pass (504), or while its body is still on the way (408). No timing decides which."""
    _url, _run, images = served
    data = first_image(images).read_bytes()
    expired = threading.Event()
    app, net = _gated_app(deadline=_deadline_when(expired))
    with ThreadServer(app) as server, ThreadPoolExecutor(1) as pool:
        late = pool.submit(httpx.post, f"{server.url}/predict", content=data, timeout=120)  # the gate stays shut
        assert net.entered.wait(120)  # its whole body is in: now its time is up
        expired.set()
        assert late.result().status_code == 504 and "deadline" in late.result().json()["error"]
        stalled = raw_status(server.url, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        assert stalled == 408
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        net.gate.set()
    app, net = _gated_app(timeout=120, max_batch=1, max_queue=1, max_wait_ms=0)
    with ThreadServer(app) as server, ThreadPoolExecutor(2) as pool:
        post = lambda: httpx.post(f"{server.url}/predict", content=data, timeout=120)  # noqa: E731
        running = pool.submit(post)
        assert net.entered.wait(120)
        queued = pool.submit(post)
        _until(lambda: app.state.batcher.waiting == 1, "one request queued")
        full = post()
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        net.gate.set()
        assert running.result().status_code == queued.result().status_code == 200


def test_batcher_batches_propagates_errors_and_refuses_when_full():
    async def scenario():
        seen = []

        def double(items):
            seen.append(len(items))
            if "boom" in items:
                raise ValueError("boom")
            return [2 * i for i in items]

        batcher = DynamicBatcher(double, max_batch=4, max_wait=0.05, max_queue=8)
        await batcher.start()
        assert await asyncio.gather(*(batcher.submit(i) for i in range(6))) == [0, 2, 4, 6, 8, 10]
        assert max(seen) == 4 and sum(seen) == 6
        with pytest.raises(ValueError):
            await batcher.submit("boom")
        flood = [asyncio.ensure_future(batcher.submit(1)) for _ in range(20)]
        results = await asyncio.gather(*flood, return_exceptions=True)
        assert any(isinstance(r, Overloaded) for r in results) and 2 in results
        assert await batcher.submit(5) == 10  # still serving
        await batcher.stop()

    asyncio.run(scenario())


def test_page_in_a_headless_browser(served):
    url, _run, images = served
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service as ChromeService
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    for tool in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not os.access(tool, os.X_OK):
            pytest.skip(f"{tool} missing: `make browser` installs Debian's chromium and chromium-driver (needs apt as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    os.environ.setdefault("SE_AVOID_STATS", "true")  # selenium must not phone home
    try:
        driver = webdriver.Chrome(service=ChromeService("/usr/bin/chromedriver"), options=options)
    except Exception as exc:  # a browser that cannot start here is an environment problem, not a bug
        pytest.skip(f"headless chromium did not start: {str(exc).splitlines()[0][:200]}")
    try:
        image = first_image(images, "dog")
        expected = httpx.post(f"{url}/predict", content=image.read_bytes(), timeout=30).json()["predictions"]
        driver.get(url + "/")
        WebDriverWait(driver, 20).until(lambda d: "classes" in d.find_element(By.ID, "about").text)
        driver.find_element(By.ID, "file").send_keys(str(image.resolve()))
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "top-label").text.strip())
        assert driver.find_element(By.ID, "top-label").text.strip() == expected[0]["label"]
        rows = driver.find_elements(By.CSS_SELECTOR, "#results .row .label")
        assert [r.text for r in rows] == [p["label"] for p in expected]
        assert driver.find_element(By.ID, "preview").get_attribute("src").startswith("blob:")
        assert "error" not in driver.find_element(By.ID, "status").get_attribute("class")
    finally:
        driver.quit()


def _request(body: bytes, content_type: str | None = None, *headers: str) -> bytes:
    lines = ["POST /predict HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *headers]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _multipart(parts: list[tuple[str, bytes]], boundary: str = "tkfuzz", end: bool = True) -> bytes:
    """``parts``: (part headers, content) pairs, joined as a multipart body."""
    body = b"".join(f"--{boundary}\r\n{head}\r\n\r\n".encode() + content + b"\r\n" for head, content in parts)
    return body + (f"--{boundary}--\r\n".encode() if end else b"")


def http_fuzz_cases(rng) -> list[tuple[str, bytes]]:
    """Seeded malformed requests: ``(what, raw HTTP request)``. Every one deserves a 4xx."""
    form = "multipart/form-data; boundary=tkfuzz"
    file_part = 'Content-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png'
    noise = lambda n: rng.integers(0, 256, n, dtype=np.uint8).tobytes()  # noqa: E731
    cases = [
        ("multipart without a boundary", _request(_multipart([(file_part, noise(200))]), "multipart/form-data")),
        ("multipart, other boundary", _request(_multipart([(file_part, noise(200))], "other"), form)),
        ("multipart, no closing boundary", _request(_multipart([(file_part, noise(300))], end=False), form)),
        ("multipart, part without headers", _request(_multipart([("", noise(100))]), form)),
        ("multipart, part without a name", _request(_multipart([("Content-Disposition: form-data", noise(50))]), form)),
        ("multipart, two files", _request(_multipart([(file_part, noise(50)), (file_part, noise(50))]), form)),
        ("multipart, many fields", _request(_multipart([(f'Content-Disposition: form-data; name="f{i}"', b"x")
                                                        for i in range(8)]), form)),
        ("multipart, empty file", _request(_multipart([(file_part, b"")]), form)),
        ("multipart, 'file' is a plain field", _request(_multipart([('Content-Disposition: form-data; name="file"',
                                                                       b"hello")]), form)),
        ("multipart, long part header", _request(_multipart([(file_part + "\r\nX-Long: " + "a" * 60_000, b"x")]), form)),
        ("multipart, 200-char boundary", _request(_multipart([(file_part, noise(64))], "b" * 200),
                                                  "multipart/form-data; boundary=" + "b" * 200)),
        ("multipart, non-UTF-8 file name", _request(b"--tkfuzz\r\nContent-Disposition: form-data; name=\"file\"; "
                                                    b"filename=\"\xff\xfe.png\"\r\n\r\n" + noise(64) + b"\r\n--tkfuzz--\r\n", form)),
        ("multipart, LF line ends", _request(_multipart([(file_part, noise(64))]).replace(b"\r\n", b"\n"), form)),
        ("multipart, garbage", _request(noise(500), form)),
        ("text/plain", _request(b"just some text", "text/plain")),
        ("json", _request(b'{"file": "iVBORw0KGgo="}', "application/json")),
        ("url-encoded form", _request(b"file=abc&x=1", "application/x-www-form-urlencoded")),
        ("content type nonsense", _request(noise(100), "???/;;;")),
        ("empty body", _request(b"")),
        ("empty multipart body", _request(b"", form)),
        ("empty chunked body", b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("Content-Length not a number", b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n"),
        ("topk nonsense", _request(noise(10)).replace(b"/predict", b"/predict?topk=-3", 1)),
    ]
    types = [None, "image/png", "image/jpeg", "application/octet-stream", "image/webp", form]
    for i in range(40):
        cases.append((f"random body {i}", _request(noise(int(rng.integers(1, 5000))), types[i % len(types)])))
    return cases


def test_http_fuzz_gets_4xx_and_the_server_stays_up(served):
    """Malformed multipart, wrong content types, empty and random bodies: each a 4xx; then bodies
    that stall (408 at the deadline). /healthz and a real prediction still answer afterwards."""
    url, _run, images = served
    statuses = {what: raw_status(url, request[:request.index(b"\r\n\r\n") + 4], [request[request.index(b"\r\n\r\n") + 4:]])
                for what, request in http_fuzz_cases(np.random.default_rng(11))}
    assert len(statuses) == 63 and {w: s for w, s in statuses.items() if not 400 <= s < 500} == {}
    assert httpx.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
    assert httpx.post(f"{url}/predict", content=first_image(images).read_bytes(), timeout=30).status_code == 200

    app, net = _gated_app(timeout=0.5)
    net.gate.set()
    with ThreadServer(app) as server:
        # The client stops sending; the server answers at its deadline (the test just waits for it).
        stalled = [raw_status(server.url, _request(b"x" * 1000)[:-990]),
                   raw_status(server.url, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"),
                   raw_status(server.url, b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                          b"10\r\n0123456789abcdef\r\n"),
                   raw_status(server.url, _request(_multipart([('Content-Disposition: form-data; name="file"',
                                                                 b"x" * 500)]), "multipart/form-data; boundary=tkfuzz")[:-200])]
        assert stalled == [408] * 4
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        assert httpx.post(f"{server.url}/predict", content=first_image(images).read_bytes(), timeout=30).status_code == 200


def test_concurrent_decodes_never_exceed_the_bound():
    """Twelve 12-megapixel uploads at once, decodes bounded to two: the decoder is instrumented and
    holds every image it gets until the test lets go, so the count of images being decoded at once is
    read while all twelve requests are in (two decoding, ten waiting with their bytes), not timed."""
    import io

    from PIL import Image

    height, width = 3000, 4000
    ramp = (np.add.outer(np.arange(height), np.arange(width)) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([ramp, ramp[::-1], ramp[:, ::-1]], -1)).save(buffer, "JPEG", quality=90)
    big = buffer.getvalue()
    app, net = _gated_app(timeout=300, max_decodes=2, max_bytes=2 * len(big), max_batch=16, max_queue=64)
    net.gate.set()  # forward passes run freely; the decoder is what is held
    service, decodes = app.state.service, app.state.decodes
    real, release, lock, seen = service.decode, threading.Event(), threading.Lock(), {"now": 0, "peak": 0, "n": 0}

    def instrumented(data, max_pixels):
        with lock:
            seen["now"] += 1
            seen["n"] += 1
            seen["peak"] = max(seen["peak"], seen["now"])
        try:
            assert release.wait(300), "the test never released the decoder"
            return real(data, max_pixels)
        finally:
            with lock:
                seen["now"] -= 1

    service.decode = instrumented
    with ThreadServer(app) as server, ThreadPoolExecutor(12) as pool:
        post = lambda _: httpx.post(f"{server.url}/predict", content=big, timeout=300)  # noqa: E731
        answers = [pool.submit(post, i) for i in range(12)]
        try:
            _until(lambda: decodes.waiting + seen["now"] == 12, "all twelve requests at the decoder")
            assert seen["now"] == decodes.running == 2 and decodes.waiting == 10  # the bound, reached and held
        finally:
            release.set()
        assert [a.result().status_code for a in answers] == [200] * 12
    assert seen["peak"] == 2 and seen["n"] == 12 and len(big) > 100_000
