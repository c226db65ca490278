"""The operator console in headless Chromium against a loaded runnerd.

With 1,000 finished turns and 20 running ones: time to the first paint of the
turn list, and of a 36,000-event transcript (its first export page), each
against the same page on an empty daemon in the same run (the baseline); then
the page's JS heap and DOM size after 20 switches between running turns,
against the same page after its first view.

"Paint" is the start of the second animation frame after the rows (or the
transcript's first page) are in the DOM, so the frame that lays them out and
paints them is over (and any layout still pending is forced); timed in the page from navigation start
(``performance.now()``), by a MutationObserver installed before the page's own
script. Needs Debian's ``chromium`` and ``chromium-driver`` and the
test extra (selenium).

    .venv/bin/python scripts/bench_console.py [--finished 1000] [--running 20] [--events 36000]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import launch_runnerd, median, stop_process  # noqa: E402

AGENTS = {"quick": "bench_console_agents:quick", "long": "bench_console_agents:long_transcript",
          "ticker": "bench_console_agents:ticker"}
MARKS = """
window.__marks = {};
const layout = () => document.body.getBoundingClientRect();  // any layout still pending happens now
new MutationObserver(() => {
  const m = window.__marks;
  const count = document.getElementById('list-count');
  if (count && count.textContent && !m.listDom) {
    m.listDom = performance.now();
    requestAnimationFrame(() => requestAnimationFrame(() => { layout(); m.list = performance.now(); }));
  }
  const range = document.getElementById('turn-range');
  if (range && range.textContent.startsWith('events') && !m.transcriptDom) {
    m.transcriptDom = performance.now();
    requestAnimationFrame(() => requestAnimationFrame(() => { layout(); m.transcript = performance.now(); }));
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def browser(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": MARKS})
    driver.execute_cdp_cmd("Performance.enable", {})
    return driver


def wait(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.01)  # polling the browser, bounded by the deadline


def paint(driver: Any, url: str, mark: str) -> float:
    """Milliseconds from navigation start to the first frame with ``mark`` rendered."""
    driver.get("about:blank")
    driver.get(url)
    wait(lambda: driver.execute_script(f"return window.__marks && window.__marks.{mark}"))
    return float(driver.execute_script(f"return window.__marks.{mark}"))


def heap(driver: Any) -> tuple[float, int]:
    """(JS heap used in MiB, DOM nodes) after a full garbage collection."""
    driver.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
    metrics = {m["name"]: m["value"] for m in driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]}
    return metrics["JSHeapUsedSize"] / 2**20, int(metrics["Nodes"])


def start(http: httpx.Client, agent: str, input: Any) -> str:
    r = http.post("/v1/turns", json={"agent": agent, "input": input})
    r.raise_for_status()
    return str(r.json()["turn_id"])


def ended(http: httpx.Client, turn_id: str) -> bool:
    return http.get(f"/v1/turns/{turn_id}").json()["status"] not in ("queued", "starting", "running")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--finished", type=int, default=1000)
    parser.add_argument("--running", type=int, default=20)
    parser.add_argument("--events", type=int, default=36000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
    port = free_port()
    proc, _, log = launch_runnerd(tmp, AGENTS, ['log_level = "warning"', "max_running_turns = 64",
                                                "max_queued = 5000", "ended_memory_s = 3600"],
                                  server=[f'tcp = "127.0.0.1:{port}"'])
    base = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base, timeout=60)
    driver = browser(tmp / "profile")
    try:
        # the baseline: the same page on an empty daemon, then on a one-page turn
        empty_list = median([paint(driver, f"{base}/ui", "list") for _ in range(args.repeat)])
        small = start(http, "long", {"n": 400})
        wait(lambda: ended(http, small))
        small_view = median([paint(driver, f"{base}/ui#/turn/{small}", "transcript") for _ in range(args.repeat)])

        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            finished = list(pool.map(lambda _: start(http, "quick", None), range(args.finished)))
        long_id = start(http, "long", {"n": args.events})
        wait(lambda: all(ended(http, t) for t in finished[-50:]) and ended(http, long_id), 600)
        running = [start(http, "ticker", {"interval": 0.5}) for _ in range(args.running)]
        wait(lambda: all(http.get(f"/v1/turns/{t}").json()["status"] == "running" for t in running), 120)
        total = http.get(f"/v1/turns/{long_id}").json()["last_seq"]
        print(f"loaded {args.finished} finished + {args.running} running turns and a {total}-event turn "
              f"in {time.monotonic() - t0:.1f} s")

        full_list = median([paint(driver, f"{base}/ui", "list") for _ in range(args.repeat)])
        rows = driver.execute_script("return document.querySelectorAll('#turns tbody tr').length")
        long_view = median([paint(driver, f"{base}/ui#/turn/{long_id}", "transcript") for _ in range(args.repeat)])
        shown = driver.execute_script("return document.querySelectorAll('#transcript .item').length")
        timing = driver.execute_script(
            "return performance.getEntriesByType('resource').filter(e => e.name.includes('/v1/'))"
            ".map(e => [e.name.replace(location.origin, ''), Math.round(e.startTime), Math.round(e.responseEnd)])")
        print("last transcript load, requests [path, start ms, end ms]:", timing)
        print(f"list first paint: empty {empty_list:.0f} ms; {rows} rows {full_list:.0f} ms "
              f"(x{full_list / empty_list:.2f})")
        print(f"transcript first paint: 400 events {small_view:.0f} ms; {total} events, first page "
              f"({shown} items) {long_view:.0f} ms (x{long_view / small_view:.2f})")

        driver.get(f"{base}/ui#/turn/{running[0]}")
        wait(lambda: driver.find_element("id", "stream-state").text == "live")
        before = heap(driver)
        for i in range(20):
            turn = running[(i + 1) % len(running)]
            driver.execute_script("location.hash = arguments[0]", f"#/turn/{turn}")
            wait(lambda: driver.execute_script(
                "return document.getElementById('turn-pane').dataset.turnId === arguments[0] && "
                "document.getElementById('stream-state').textContent === 'live'", turn))
        after = heap(driver)
        metrics = dict(line.split(" ", 1) for line in http.get("/metrics").text.splitlines()
                       if line and not line.startswith("#"))
        streams = int(metrics["runnerd_open_streams"]) - int(metrics["runnerd_turn_feed_streams"])
        print(f"page after its first view: JS heap {before[0]:.1f} MiB, {before[1]} DOM nodes; "
              f"after 20 switches: {after[0]:.1f} MiB (x{after[0] / before[0]:.2f}), {after[1]} nodes; "
              f"turn streams open on the daemon: {streams}")
    finally:
        driver.quit()
        for turn in http.get("/v1/turns", params={"status": "running", "limit": 10000}).json()["turns"]:
            http.post(f"/v1/turns/{turn['turn_id']}/cancel", json={})
        http.close()
        stop_process(proc)
        print(f"(daemon log: {log})")


if __name__ == "__main__":
    main()
