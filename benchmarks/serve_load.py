"""Load test for ``transferkit serve``: N requests from C concurrent clients over loopback.

    python benchmarks/serve_load.py --run RUN_DIR -n 500 -c 16            # starts the server itself
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 -n 500   # an already running server

Each client is a thread with its own keep-alive connection (httpx), posting the same image as
multipart ``file``. Prints latency percentiles, requests/s, failures, and the server's average
batch size (from /healthz). The default image is scikit-learn's sample photo china.jpg (640x427
JPEG), so decoding and resizing are part of what is measured, as they are for real uploads.
Exit status 1 if any request failed.
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx


def sample_jpeg() -> bytes:
    from PIL import Image
    from sklearn.datasets import load_sample_image

    buffer = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "transferkit", "serve", run_dir, "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with status {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    sys.exit("server did not come up within 120 s")


def load(url: str, image: bytes, total: int, concurrency: int) -> tuple[list[float], dict, float]:
    latencies, failures, lock = [], {}, threading.Lock()
    remaining = [total]

    def client():
        with httpx.Client(timeout=60) as session:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                start = time.perf_counter()
                try:
                    response = session.post(f"{url}/predict", files={"file": ("china.jpg", image, "image/jpeg")})
                    outcome = response.status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                elapsed = time.perf_counter() - start
                with lock:
                    if outcome == 200:
                        latencies.append(elapsed)
                    else:
                        failures[outcome] = failures.get(outcome, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failures, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--run", help="a run directory: start `transferkit serve` on a free loopback port for the test")
    parser.add_argument("-n", "--requests", type=int, default=500)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=20, help="requests sent (and not counted) first")
    parser.add_argument("--image", help="image file to send (default: scikit-learn's china.jpg)")
    parser.add_argument("--serve-args", default="", help="extra flags for `transferkit serve`, e.g. '--max-batch 1'")
    args = parser.parse_args(argv)

    image = open(args.image, "rb").read() if args.image else sample_jpeg()
    proc = None
    url = args.url
    if args.run:
        proc, url = start_server(args.run, args.serve_args.split())
    try:
        load(url, image, args.warmup, min(args.concurrency, max(1, args.warmup)))
        before = httpx.get(f"{url}/healthz", timeout=10).json()
        latencies, failures, wall = load(url, image, args.requests, args.concurrency)
        after = httpx.get(f"{url}/healthz", timeout=10).json()
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)
    batches = after["batches"] - before["batches"]
    answered = after["predictions"] - before["predictions"]
    print(f"model {after['model']} ({after['backend']}), image {len(image)} bytes, "
          f"{args.requests} requests, {args.concurrency} concurrent, {os.cpu_count()} CPUs")
    if latencies:
        ms = [1000 * v for v in latencies]
        print(f"p50 {percentile(ms, 50):.1f} ms  p90 {percentile(ms, 90):.1f} ms  p99 {percentile(ms, 99):.1f} ms  "
              f"mean {statistics.mean(ms):.1f} ms  max {max(ms):.1f} ms")
    print(f"{len(latencies) / wall:.1f} requests/s over {wall:.1f} s; "
          f"average batch {answered / max(1, batches):.2f} ({batches} forward passes)")
    print(f"failed: {sum(failures.values())} {failures if failures else ''}".rstrip())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
