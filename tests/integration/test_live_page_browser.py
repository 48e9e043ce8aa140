"""The live page in headless Chromium, under load: the requests per second and the p50 latency
it shows for a model match what ``/metrics`` says over the same window, within 10 %.

Needs Chromium and its driver (``apt-get install chromium chromium-driver``) and selenium; the
test is skipped, saying so, where they are missing. Set ``MODELYARD_SCREENSHOT=path.png`` to keep
a screenshot of the page under load (docs/operations.md shows one).
"""

from __future__ import annotations

import bisect
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.metrics.stats import LATENCY_BUCKETS_S
from modelyard.testing.models import model_config, write_config, write_onnx_linear
from modelyard.testing.server import RunningServer, serving

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip(
        "headless Chromium is not installed (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

CLIENTS = 3
TOLERANCE = 0.10
READ_ROW = """
const row = document.querySelector('tr[data-key="linear:1"]');
if (!row) return null;
return {...row.dataset, visible: row.querySelector("td.rate").textContent};
"""
Series = list[tuple[float, float, list[float]]]  # (time ms, successes, cumulative bucket counts)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("live")
    linear = write_onnx_linear(root / "linear" / "1")
    config = write_config(root / "modelyard.yaml", [model_config("linear", {1: linear})])
    with serving(config) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch a driver
    profile = tempfile.mkdtemp(prefix="modelyard-chromium-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _scrape(client: httpx.Client) -> tuple[float, float, list[float]]:
    sent = time.time()
    text = client.get("/metrics").text
    at_ms = (sent + time.time()) / 2 * 1000.0
    success = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") != "linear" or s.labels.get("version") != "1":
                continue
            if s.name.startswith("nv_inference_request_success"):
                success = s.value
            elif s.name == "modelyard_request_duration_seconds_bucket":
                buckets[float(s.labels["le"])] = s.value
    return at_ms, success, [buckets[b] for b in sorted(buckets)]


def _at(series: Series, t_ms: float) -> tuple[float, list[float]]:
    """The counters at ``t_ms``, linearly interpolated between the scrapes around it."""
    times = [s[0] for s in series]
    i = bisect.bisect_left(times, t_ms)
    assert 0 < i < len(series), f"no scrapes around {t_ms} ({times[0]}..{times[-1]})"
    (t0, s0, b0), (t1, s1, b1) = series[i - 1], series[i]
    f = (t_ms - t0) / (t1 - t0)
    return s0 + f * (s1 - s0), [x + f * (y - x) for x, y in zip(b0, b1, strict=True)]


def _quantile(q: float, cumulative: list[float]) -> float:
    """histogram_quantile over cumulative bucket counts (bounds: LATENCY_BUCKETS_S, then +Inf)."""
    counts = [cumulative[0]] + [b - a for a, b in itertools.pairwise(cumulative)]
    rank = q * cumulative[-1]
    total = 0.0
    for i, count in enumerate(counts):
        before, total = total, total + count
        if total >= rank and count > 0:
            if i >= len(LATENCY_BUCKETS_S):
                return LATENCY_BUCKETS_S[-1]
            lower = LATENCY_BUCKETS_S[i - 1] if i else 0.0
            return lower + (LATENCY_BUCKETS_S[i] - lower) * (rank - before) / count
    return LATENCY_BUCKETS_S[-1]


def test_rates_and_latency_on_the_page_match_metrics_under_load(
    server: RunningServer, browser: Any
) -> None:
    stop = threading.Event()
    series: Series = []
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}

    def load() -> None:
        with httpx.Client(base_url=server.rest_url, timeout=30) as client:
            for _ in range(100_000):
                if stop.is_set():
                    return
                client.post("/v2/models/linear/infer", json=body)

    def scrape() -> None:
        with httpx.Client(base_url=server.rest_url, timeout=30) as client:
            for _ in range(10_000):
                if stop.is_set():
                    return
                series.append(_scrape(client))
                time.sleep(0.2)

    threads = [threading.Thread(target=load) for _ in range(CLIENTS)]
    threads.append(threading.Thread(target=scrape))
    for thread in threads:
        thread.start()
    try:
        browser.get(server.rest_url + "/")
        shown: dict[str, Any] | None = None
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:  # until the page has a full 4 s window of load
            time.sleep(0.5)
            # One read of the row as it is now: the page redraws it every second.
            row = browser.execute_script(READ_ROW)
            if not row or not row["rate"]:
                continue
            # A window the scrapes cover from its start: on a loaded box the first scrape can
            # come after the page's window began (seen once: 460 ms late).
            covered = bool(series) and float(row["fromMs"]) > series[0][0]
            full = float(row["toMs"]) - float(row["fromMs"]) >= 4000
            if full and covered and float(row["rate"]) > 0:
                shown = row
                break
        assert shown is not None, "the page never showed a rate for linear:1"
        time.sleep(0.6)  # a scrape after the page's window closed
        if os.environ.get("MODELYARD_SCREENSHOT"):
            browser.save_screenshot(os.environ["MODELYARD_SCREENSHOT"])
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    page_rate, page_p50_ms = float(shown["rate"]), float(shown["p50Ms"])
    start_success, start_buckets = _at(series, float(shown["fromMs"]))
    end_success, end_buckets = _at(series, float(shown["toMs"]))
    seconds = (float(shown["toMs"]) - float(shown["fromMs"])) / 1000.0
    metrics_rate = (end_success - start_success) / seconds
    window = [b - a for a, b in zip(start_buckets, end_buckets, strict=True)]
    metrics_p50_ms = _quantile(0.5, window) * 1000.0
    print(
        f"\npage: {page_rate:.1f} req/s, p50 {page_p50_ms:.2f} ms; "
        f"/metrics: {metrics_rate:.1f} req/s, p50 {metrics_p50_ms:.2f} ms over {seconds:.1f} s"
    )
    assert metrics_rate > 0
    assert abs(page_rate - metrics_rate) <= TOLERANCE * metrics_rate
    assert abs(page_p50_ms - metrics_p50_ms) <= TOLERANCE * metrics_p50_ms
    assert shown["visible"] == f"{page_rate:.1f}"  # what a person reads is that number
    page = browser.find_element("tag name", "body").text
    assert "planned" in page
    assert "measured" in page
