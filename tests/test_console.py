"""The operator console in a real browser (Debian's chromium + chromium-driver, via selenium)
against a real runnerd on TCP with a token."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TEST_AGENTS, wait_for
from daemon_fixture import BIN, TESTS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = TESTS / "artifacts"
TOKEN = "console-test-token-0123456789"
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "lost"}

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
except ImportError:  # the test extra pins it
    webdriver = None

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None or webdriver is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver) and selenium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Runnerd:
    """A real daemon with TCP + token on 127.0.0.1, and an API client that carries the token."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        (tmp / "token").write_text(TOKEN)
        agents = dict(TEST_AGENTS, demo="worker.demos:chat", trickle="console_agents:trickle",
                      mixed="console_agents:mixed", xss="console_agents:xss")
        lines = [f'state_dir = "{tmp / "state"}"', "cancel_grace_s = 0.3", "kill_grace_s = 0.3",
                 "max_running_turns = 64", "", "[agents]", *(f'{k} = "{v}"' for k, v in agents.items()),
                 "", "[server]", f'socket = "{tmp / "run" / "runnerd.sock"}"',
                 f'tcp = "127.0.0.1:{self.port}"', f'token_file = "{tmp / "token"}"',
                 # full logs of compacted turns go at an explicit prune only
                 "", "[retention]", "keep_raw_s = 0.0", "interval_s = 3600.0"]
        config = tmp / "runnerd.toml"
        config.write_text("\n".join(lines) + "\n")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
        env.pop("NOTIFY_SOCKET", None)
        self.log = tmp / "runnerd.log"
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([str(BIN / "runnerd"), "--config", str(config)], stdout=logf,
                                         stderr=logf, env=env)
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.base, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)

        def ready() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                return self.http.get("/v1/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 20, 0.02)

    def start(self, agent: str, input: Any = None) -> str:
        r = self.http.post("/v1/turns", json={"agent": agent, "input": input})
        assert r.status_code == 201, r.text
        return str(r.json()["turn_id"])

    def status(self, turn_id: str) -> str:
        return str(self.http.get(f"/v1/turns/{turn_id}").json()["status"])

    def wait_ended(self, turn_id: str, timeout: float = 30) -> None:
        wait_for(lambda: self.status(turn_id) in TERMINAL, timeout, 0.02)

    def export(self, turn_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.http.get(f"/v1/turns/{turn_id}/export", params={"after": after, "limit": 10000}).json()
            events += page["events"]
            after = page["next_after"]
            if not page["truncated"]:
                return events

    def streams(self) -> tuple[int, int]:
        """(open SSE streams of turns, open turn-feed streams), counted by the daemon."""
        metrics = dict(line.split(" ", 1) for line in self.http.get("/metrics").text.splitlines()
                       if line and not line.startswith("#"))
        feed = int(metrics["runnerd_turn_feed_streams"])
        return int(metrics["runnerd_open_streams"]) - feed, feed

    def end_all(self) -> None:
        for turn in self.http.get("/v1/turns", params={"limit": 10000}).json()["turns"]:
            if turn["status"] not in TERMINAL:
                self.http.post(f"/v1/turns/{turn['turn_id']}/cancel", json={})
                self.wait_ended(turn["turn_id"])

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class CuttingProxy:
    """A TCP relay in front of the daemon whose ``cut()`` resets every open connection:
    what a browser sees when the daemon's side drops mid-stream. Like a reverse proxy,
    it names the daemon's own address in ``Host`` and ``Origin`` (the daemon answers
    only requests for its own listener names)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_daemon: bool) -> None:
        ours, theirs = b"127.0.0.1:%d" % self.port, b"127.0.0.1:%d" % self.target
        try:
            while data := src.recv(65536):
                dst.sendall(data.replace(ours, theirs) if to_daemon else data)
        except OSError:
            pass
        finally:
            self._drop(src)
            self._drop(dst)

    def _drop(self, s: socket.socket) -> None:
        with self.lock:
            self.sockets.discard(s)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv() on it
        except OSError:
            pass
        s.close()  # linger 0: a reset

    def cut(self) -> None:
        with self.lock:
            victims = list(self.sockets)
        for s in victims:
            self._drop(s)
        self.cuts += 1

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture(scope="module")
def runnerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runnerd]:
    d = Runnerd(tmp_path_factory.mktemp("console"))
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def console(runnerd: Runnerd, browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The page, token given, list live; afterwards a screenshot and no turn left running."""
    open_console(browser, runnerd.base)
    yield browser
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"{request.node.name}.png"))
    browser.get("about:blank")  # closes the page's streams
    runnerd.end_all()


def open_console(driver: Any, base: str, hash_: str = "") -> None:
    driver.get(f"{base}/ui{hash_}")

    def ready() -> bool:
        if driver.find_element(By.ID, "token-form").is_displayed():
            driver.find_element(By.ID, "token").send_keys(TOKEN)
            driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
        return bool(driver.find_element(By.ID, "feed-state").text == "list: live")

    wait_for(ready, 20, 0.05)


def js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


RENDERED = """
const q = (s) => [...document.querySelectorAll(s)];
return {
  messages: q('#transcript .msg').map(d => [d.dataset.messageId, d.querySelector('.role').textContent,
                                             d.querySelector('.text').textContent]),
  tools: q('#transcript .tool').map(d => [d.dataset.toolCallId, d.querySelector('.name').textContent,
                                          d.querySelector('.args').textContent, d.querySelector('.result').textContent]),
  items: q('#transcript .item[data-seq]').filter(d => !d.dataset.messageId && !d.dataset.toolCallId)
                                       .map(d => +d.dataset.seq),
  gaps: q('#transcript .gap').length,
  last: +document.getElementById('turn-pane').dataset.lastSeq,
  reconnects: +document.getElementById('turn-pane').dataset.reconnects,
  state: document.getElementById('stream-state').textContent,
  turn: document.getElementById('turn-pane').dataset.turnId,
};
"""
_FOLDED = {"TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END", "TOOL_CALL_START",
           "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"}


def expected(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What the transcript must show for these events."""
    messages: dict[str, list[str]] = {}
    tools: dict[str, list[str]] = {}
    for e in events:
        t = e["type"]
        if t == "TEXT_MESSAGE_START":
            messages[e["messageId"]] = [e["messageId"], e["role"] + ":", ""]
        elif t == "TEXT_MESSAGE_CONTENT":
            messages[e["messageId"]][2] += e["delta"]
        elif t == "TOOL_CALL_START":
            tools[e["toolCallId"]] = [e["toolCallId"], e["toolCallName"], "", ""]
        elif t == "TOOL_CALL_ARGS":
            tools[e["toolCallId"]][2] += e["delta"]
        elif t == "TOOL_CALL_RESULT":
            tools[e["toolCallId"]][3] = e["content"]
    return {"messages": list(messages.values()), "tools": list(tools.values()),
            "items": [e["seq"] for e in events if e["type"] not in _FOLDED], "gaps": 0,
            "last": events[-1]["seq"]}


def until(driver: Any, condition: Any, timeout: float = 20, note: list[Any] | None = None) -> None:
    """Wait for ``condition``; at the deadline, fail with what the view shows."""
    try:
        wait_for(condition, timeout, 0.02)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {(note or [None])[-1]}; the view: {js(driver, RENDERED)}") from None


def view_turn(driver: Any, turn_id: str) -> None:
    driver.execute_script("location.hash = arguments[0]", f"#/turn/{turn_id}")


def shown(driver: Any, runnerd: Runnerd, turn_id: str) -> dict[str, Any]:
    """Once the view has the whole turn: what it renders."""
    runnerd.wait_ended(turn_id)
    last = runnerd.http.get(f"/v1/turns/{turn_id}").json()["last_seq"]
    wait_for(lambda: js(driver, RENDERED)["last"] == last and js(driver, RENDERED)["turn"] == turn_id, 20, 0.05)
    got: dict[str, Any] = js(driver, RENDERED)
    return got


@pytest.mark.timeout(90)
def test_a_started_turn_appears_in_the_list_within_a_second(console: Any, runnerd: Runnerd) -> None:
    tid = runnerd.start("trickle", {"n": 10, "delay": 0.01})
    started = time.monotonic()
    wait_for(lambda: console.find_elements(By.CSS_SELECTOR, f'#turns tr[data-turn-id="{tid}"]'), 1.0, 0.02)
    assert time.monotonic() - started < 1.0
    runnerd.wait_ended(tid)
    # and its row follows it to the end without a reload
    row = f'#turns tr[data-turn-id="{tid}"] td.status'
    wait_for(lambda: console.find_element(By.CSS_SELECTOR, row).text == "succeeded", 10, 0.05)
    seq = console.find_element(By.CSS_SELECTOR, f'#turns tr[data-turn-id="{tid}"] td.seq').text
    assert int(seq) == runnerd.http.get(f"/v1/turns/{tid}").json()["last_seq"]


@pytest.mark.timeout(90)
def test_the_transcript_matches_the_export_finished_and_live(console: Any, runnerd: Runnerd) -> None:
    done = runnerd.start("mixed", {"n": 120})
    runnerd.wait_ended(done)
    view_turn(console, done)
    assert {k: v for k, v in shown(console, runnerd, done).items() if k in ("messages", "tools", "items", "gaps", "last")} \
        == expected(runnerd.export(done))
    live = runnerd.start("trickle", {"n": 40, "delay": 0.03})
    view_turn(console, live)  # opened while it runs: export page, then the live stream
    got = shown(console, runnerd, live)
    assert {k: got[k] for k in ("messages", "tools", "items", "gaps", "last")} == expected(runnerd.export(live))
    assert got["state"] == "ended"
    assert json.loads(console.find_element(By.ID, "state").text) == {"words": 40}


@pytest.mark.timeout(120)
def test_twenty_switches_leave_exactly_one_open_stream(console: Any, runnerd: Runnerd) -> None:
    turns = [runnerd.start("trickle", {"n": 100000, "delay": 0.2}) for _ in range(3)]
    wait_for(lambda: all(runnerd.status(t) == "running" for t in turns), 20, 0.05)
    for i in range(20):
        view_turn(console, turns[i % 3])
        if i % 4 == 0:  # the others land before the previous stream even opened
            until(console, lambda: js(console, RENDERED)["state"] == "live")
    last = turns[19 % 3]
    until(console, lambda: js(console, RENDERED)["state"] == "live" and js(console, RENDERED)["turn"] == last)
    counts: list[tuple[int, int]] = []
    until(console, lambda: counts.append(runnerd.streams()) or counts[-1] == (1, 1),
          note=counts)  # one turn stream, one list feed
    # and it is the shown turn's stream, still moving
    before = js(console, RENDERED)["last"]
    until(console, lambda: js(console, RENDERED)["last"] > before)
    assert runnerd.streams() == (1, 1)


@pytest.mark.timeout(120)
def test_cut_connections_reattach_with_no_duplicate_and_no_gap(runnerd: Runnerd, browser: Any) -> None:
    proxy = CuttingProxy(runnerd.port)
    try:
        tid = runnerd.start("trickle", {"n": 300, "delay": 0.03})
        open_console(browser, f"http://127.0.0.1:{proxy.port}", f"#/turn/{tid}")
        for _ in range(3):
            seen = js(browser, RENDERED)["last"]
            until(browser, lambda: js(browser, RENDERED)["last"] > seen + 5 and js(browser, RENDERED)["state"] == "live")
            assert runnerd.status(tid) == "running"
            proxy.cut()  # mid-stream: the turn goes on
        got = shown(browser, runnerd, tid)
        assert got["reconnects"] >= 3
        assert {k: got[k] for k in ("messages", "tools", "items", "gaps", "last")} == expected(runnerd.export(tid))
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "cut_connections.png"))
    finally:
        browser.get("about:blank")
        proxy.close()
        runnerd.end_all()


@pytest.mark.timeout(90)
def test_agent_strings_with_html_show_as_text_and_run_nothing(console: Any, runnerd: Runnerd) -> None:
    from console_agents import XSS
    tid = runnerd.start("xss")
    view_turn(console, tid)
    got = shown(console, runnerd, tid)
    assert {k: got[k] for k in ("messages", "tools", "items", "gaps", "last")} == expected(runnerd.export(tid))
    assert got["messages"][0][2] == "".join(XSS)  # shown literally, as text
    assert XSS[0] in got["tools"][0][1] and got["tools"][0][3] == XSS[2]
    page_text = console.find_element(By.ID, "turn-pane").text
    assert all(p in page_text for p in XSS)  # in the state, the step, the custom event too
    assert js(console, "return window.__xss === undefined")
    assert js(console, "return document.querySelectorAll('#turn-pane img, #turn-pane svg, #turn-pane script').length") == 0


@pytest.mark.timeout(90)
def test_start_cancel_output_and_download_from_the_page(console: Any, runnerd: Runnerd) -> None:
    Select(console.find_element(By.ID, "start-agent")).select_by_visible_text("trickle")
    box = console.find_element(By.ID, "start-input")
    box.clear()
    box.send_keys("{not json")
    console.find_element(By.CSS_SELECTOR, "#start-form button").click()
    wait_for(lambda: "not valid JSON" in console.find_element(By.ID, "start-error").text, 5, 0.05)
    box.clear()
    box.send_keys('{"n": 100000, "delay": 0.05}')
    console.find_element(By.CSS_SELECTOR, "#start-form button").click()
    wait_for(lambda: js(console, RENDERED)["turn"] and js(console, RENDERED)["state"] == "live", 10, 0.05)
    tid = js(console, RENDERED)["turn"]
    assert runnerd.http.get(f"/v1/turns/{tid}").json()["agent"] == "trickle"
    console.find_element(By.ID, "cancel").click()
    runnerd.wait_ended(tid)
    assert runnerd.status(tid) == "cancelled"
    wait_for(lambda: console.find_element(By.ID, "turn-status").text == "cancelled", 10, 0.05)
    console.find_element(By.ID, "show-output").click()
    wait_for(lambda: "trickle: to stderr" in console.find_element(By.ID, "output").text, 10, 0.05)
    assert "trickle: 100000 words" in console.find_element(By.ID, "output").text
    for button, name in (("dl-json", f"{tid}.json"), ("dl-jsonl", f"{tid}.jsonl")):
        console.find_element(By.ID, button).click()
        wait_for(lambda: (console.downloads / name).exists(), 10, 0.05)
    events = runnerd.export(tid)
    wait_for(lambda: len((console.downloads / f"{tid}.jsonl").read_text().splitlines()) == len(events), 10, 0.05)
    assert [json.loads(x) for x in (console.downloads / f"{tid}.jsonl").read_text().splitlines()] == events
    assert json.loads((console.downloads / f"{tid}.json").read_text())["events"] == events


@pytest.mark.timeout(30)
def test_the_page_is_served_without_the_token_and_the_api_still_wants_it(runnerd: Runnerd) -> None:
    with httpx.Client(base_url=runnerd.base) as anon:
        page = anon.get("/ui")
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
        assert anon.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
        assert anon.get("/v1/turns").status_code == 401
        assert anon.get("/v1/turns/events").status_code == 401
        assert anon.get("/ui/../v1/turns").status_code in (401, 404)
        assert anon.post("/ui", json={}).status_code in (401, 405)


JOINED = """
const by = (sel, key, part) => {
  const out = {};
  for (const d of document.querySelectorAll(sel)) out[d.dataset[key]] = (out[d.dataset[key]] || '') + d.querySelector(part).textContent;
  return out;
};
return {messages: by('#transcript .msg', 'messageId', '.text'), args: by('#transcript .tool', 'toolCallId', '.args'),
        items: [...document.querySelectorAll('#transcript .item[data-seq]')].filter(d => !d.dataset.messageId && !d.dataset.toolCallId).map(d => +d.dataset.seq),
        shown: document.querySelectorAll('#transcript .item').length,
        first: document.getElementById('turn-range').textContent,
        earlier: !document.getElementById('load-earlier').hidden};
"""


@pytest.mark.timeout(120)
def test_a_long_history_is_paged_from_the_export(console: Any, runnerd: Runnerd) -> None:
    tid = runnerd.start("mixed", {"n": 1300})
    runnerd.wait_ended(tid)
    events = runnerd.export(tid)
    total = events[-1]["seq"]
    view_turn(console, tid)
    until(console, lambda: js(console, RENDERED)["last"] == total)
    first = js(console, JOINED)
    assert first["earlier"] and first["first"] == f"events {total - 499}-{total}"  # one page, not the whole
    clicks = 0
    while js(console, JOINED)["earlier"]:
        shown_before = js(console, JOINED)["shown"]
        console.find_element(By.ID, "load-earlier").click()
        until(console, lambda: js(console, JOINED)["shown"] > shown_before)
        clicks += 1
    assert clicks == (total - 500 + 499) // 500
    got = js(console, JOINED)
    assert got["first"] == f"events 1-{total}"
    messages: dict[str, str] = {}
    args: dict[str, str] = {}
    for e in events:
        if e["type"] == "TEXT_MESSAGE_CONTENT":
            messages[e["messageId"]] = messages.get(e["messageId"], "") + e["delta"]
        elif e["type"] == "TOOL_CALL_ARGS":
            args[e["toolCallId"]] = args.get(e["toolCallId"], "") + e["delta"]
    assert got["messages"] == messages and got["args"] == args  # pieces split across pages join up
    assert got["items"] == [e["seq"] for e in events if e["type"] not in _FOLDED]


@pytest.mark.timeout(90)
def test_a_turn_whose_full_log_retention_removed_shows_its_snapshot_form(console: Any, runnerd: Runnerd) -> None:
    tid = runnerd.start("demo", {"delay": 0})
    runnerd.wait_ended(tid)
    wait_for(lambda: runnerd.http.get(f"/v1/turns/{tid}").json()["compaction"] == "done", 20, 0.02)
    assert tid in runnerd.http.post("/v1/prune", json={}).json()["raw_removed"]
    page = runnerd.http.get(f"/v1/turns/{tid}/export").json()
    assert page["compacted"]
    snapshot = next(e for e in page["events"] if e["type"] == "MESSAGES_SNAPSHOT")
    view_turn(console, tid)
    until(console, lambda: js(console, RENDERED)["last"] == page["events"][-1]["seq"])
    got = js(console, RENDERED)
    texts = [m["content"] for m in snapshot["messages"] if m["role"] == "assistant" and m.get("content")]
    assert [m[2] for m in got["messages"]] == texts and texts
    assert [t[1] for t in got["tools"]] == ["search"] and got["tools"][0][3] == "runnerd: a supervisor daemon for agent runs"
    assert got["items"] == [e["seq"] for e in page["events"] if e["type"] not in _FOLDED]
    assert "full event log was removed by retention" in console.find_element(By.ID, "transcript").text
    assert not console.find_element(By.ID, "load-earlier").is_displayed()


@pytest.mark.timeout(60)
def test_a_cross_site_page_cannot_start_or_cancel_a_turn(console: Any, runnerd: Runnerd,
                                                          tmp_path: Path) -> None:
    """The console's tab holds the token; a page of another origin in the same browser
    tries every way a browser lets it send a POST to the daemon."""
    import http.server

    victim = runnerd.start("trickle", {"n": 100000, "delay": 0.2})
    before = len(runnerd.http.get("/v1/turns", params={"limit": 10000}).json()["turns"])
    (tmp_path / "evil.html").write_text(f"""<!doctype html><body>
<form id=f method=POST action="{runnerd.base}/v1/turns" enctype="text/plain" target=sink>
<input name='{{"agent": "count", "input": {{"n": 1}}, "x": "' value='"}}'></form>
<iframe name=sink></iframe>
<script>
const base = {json.dumps(runnerd.base)};
const tries = [
  fetch(base + "/v1/turns", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
                               body: '{{"agent": "count", "input": {{"n": 1}}}}'}}),
  fetch(base + "/v1/turns/{victim}/cancel", {{method: "POST", mode: "no-cors", body: "{{}}"}}),
  fetch(base + "/v1/turns", {{method: "POST", credentials: "include", headers: {{"Content-Type": "application/json"}},
                               body: '{{"agent": "count"}}'}}),
];
Promise.allSettled(tries).then(r => {{ document.title = "done " + r.map(x => x.status).join(","); }});
document.getElementById("f").submit();
</script></body>""")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a: Quiet(*a, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        console.get(f"http://localhost:{server.server_address[1]}/evil.html")  # another origin
        wait_for(lambda: console.title.startswith("done"), 10, 0.05)
        wait_for(lambda: console.execute_script(
            "try { return frames[0].location.href !== 'about:blank' } catch (e) { return true }"), 10, 0.05)
        assert len(runnerd.http.get("/v1/turns", params={"limit": 10000}).json()["turns"]) == before
        assert runnerd.status(victim) == "running"
    finally:
        server.shutdown()
        server.server_close()
