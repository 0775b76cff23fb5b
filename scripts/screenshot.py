"""Take the dashboard's picture (``docs/dashboard.png``): a race of every normalization method.

Starts ``streamnorm serve`` (its own embedded Redis in a temporary folder, or ``--redis-url``),
creates a race with one member per method of ``GET /norms`` on a small synthetic stream (a
two-tone signal whose input gain jumps mid-way: where running statistics matter), feeds it a
few hundred learns over HTTP, opens ``/`` in headless Chromium at 1400x900, picks the race,
waits for the curves and saves the page. Needs the dev extras and Debian's ``chromium`` and
``chromium-driver``::

    .venv/bin/python scripts/screenshot.py                    # writes docs/dashboard.png
    .venv/bin/python scripts/screenshot.py --learns 600 --theme light --out /tmp/light.png
"""

from __future__ import annotations

import argparse
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"task": "regression", "n_features": 3, "cell": "lstm", "hidden_size": 32, "window": 16,
        "optimizer": {"name": "adam", "lr": 0.005}, "seed": 0}
CURVE_EVERY = 5  # a point every 5 updates: smooth curves from a few hundred learns


def stream(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Learn bodies: predict the next value of a two-tone signal from it (times a gain that
    jumps from 1 to 3 half-way), a slow clock and noise."""
    rng = random.Random(seed)

    def signal(t: int) -> float:
        return math.sin(0.21 * t) + 0.4 * math.sin(0.047 * t + 1.0)

    out = []
    for t in range(n):
        gain = 1.0 if t < n // 2 else 3.0
        x = [gain * signal(t), math.cos(0.013 * t), rng.gauss(0.0, 0.3)]
        y = signal(t + 1) + rng.gauss(0.0, 0.05)
        out.append({"stream": "sensor", "x": x, "y": y, "event_id": f"shot-{t}"})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(port: int, redis_url: str | None, data_dir: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "STREAMNORM_CURVE_EVERY": str(CURVE_EVERY), "OMP_NUM_THREADS": "1"}
    if redis_url:
        env["STREAMNORM_REDIS_URL"] = redis_url
    else:
        env.pop("STREAMNORM_REDIS_URL", None)
        env["STREAMNORM_DATA_DIR"] = data_dir
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port),
                             "--stream-workers", "0", "--log-level", "warning"],
                            cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"streamnorm serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("streamnorm serve did not become ready in 60 s")


def make_race(http: httpx.Client, race: str, learns: int) -> int:
    """Create the race (one member per method) and feed it; the members' count."""
    if http.get(f"/races/{race}").status_code == 200:
        http.delete(f"/races/{race}").raise_for_status()
    methods = [norm["method"] for norm in http.get("/norms").raise_for_status().json()]
    body = {"name": race, "spec": SPEC, "members": [{"norm": m} for m in methods],
            "min_updates": 50}
    http.post("/races", json=body).raise_for_status()
    started = time.monotonic()
    for i, event in enumerate(stream(learns)):
        http.post(f"/races/{race}/learn", json=event).raise_for_status()
        if (i + 1) % 100 == 0:
            print(f"{i + 1} learns ({time.monotonic() - started:.0f} s)", flush=True)
    return len(methods)


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--window-size=1400,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    return driver


def shoot(url: str, race: str, want_points: int, theme: str, out: Path) -> None:
    driver = browser()
    try:
        driver.get(url + "/")
        driver.execute_script("localStorage.setItem('streamnorm.theme', arguments[0])", theme)
        driver.refresh()
        link = WebDriverWait(driver, 20).until(
            lambda d: d.find_element(By.CSS_SELECTOR, f'a.race[data-name="{race}"]'))
        link.click()
        WebDriverWait(driver, 60).until(lambda d: int(d.find_element(
            By.CSS_SELECTOR, "#race-chart svg").get_attribute("data-points") or 0)
            >= want_points)
        chart = driver.find_element(By.CSS_SELECTOR, "#race-chart svg")
        # the hover read-out at 60 % of the way: every member's value at one update
        width = chart.size["width"]
        ActionChains(driver).move_to_element_with_offset(chart, int(width * 0.1), -60).perform()
        time.sleep(0.8)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        print(f"wrote {out}")
    finally:
        driver.quit()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    p.add_argument("--redis-url", help="use this Redis (default: an embedded one, temporary)")
    p.add_argument("--race", default="showcase")
    p.add_argument("--learns", type=int, default=400)
    p.add_argument("--theme", choices=("dark", "light"), default="dark")
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="streamnorm-shot-") as data:
        proc = start_service(port, args.redis_url, data)
        try:
            with httpx.Client(base_url=url, timeout=60) as http:
                members = make_race(http, args.race, args.learns)
            shoot(url, args.race, members * (args.learns // CURVE_EVERY), args.theme, args.out)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
