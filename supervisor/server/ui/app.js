// runnerd operator console. No framework, no build step, nothing from elsewhere.
// Every string that comes from an agent or the API is put in the page with
// textContent / text nodes, never as HTML.
"use strict";

const PAGE = 500; // events per export page
const TERMINAL = new Set(["RUN_FINISHED", "RUN_ERROR"]);
const $ = (id) => document.getElementById(id);

// -- access ------------------------------------------------------------------
// Over TCP the API wants the token; a browser gives it here, kept in this tab
// only, sent as a header by fetch (EventSource cannot send headers, so the
// streams are read with fetch too).
let token = sessionStorage.getItem("runnerd.token") || "";
let tokenWaiters = [];

function askToken() {
  $("token-form").hidden = false;
  $("token").focus();
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("runnerd.token", token);
  $("token-form").hidden = true;
  const waiters = tokenWaiters;
  tokenWaiters = [];
  waiters.forEach((resolve) => resolve());
});

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// GET, or POST with a JSON body (Content-Type: application/json; same origin).
async function api(path, body) {
  for (;;) {
    const init = { headers: authHeaders(), cache: "no-store", credentials: "same-origin" };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (r.status === 401) {
      await askToken();
      continue;
    }
    const data = await r.json().catch(() => null);
    if (!r.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(r.status, err.code || "http_error", err.message || "HTTP " + r.status);
    }
    return data;
  }
}

// -- Server-Sent Events over fetch, resumable ---------------------------------
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class Stream {
  // onFrame(event, id, data) -> true when the stream is complete (no reconnect).
  constructor(url, lastId, onFrame, onState) {
    this.url = url;
    this.lastId = lastId;
    this.onFrame = onFrame;
    this.onState = onState;
    this.closed = false;
    this.complete = false;
    this.reconnects = 0;
    this.ctrl = null;
    this.loop();
  }

  close() {
    this.closed = true;
    if (this.ctrl) this.ctrl.abort();
  }

  async loop() {
    let delay = 200;
    while (!this.closed && !this.complete) {
      this.ctrl = new AbortController();
      try {
        const headers = authHeaders({ Accept: "text/event-stream" });
        if (this.lastId !== null) headers["Last-Event-ID"] = String(this.lastId);
        const r = await fetch(this.url, { headers, signal: this.ctrl.signal, cache: "no-store", credentials: "same-origin" });
        if (r.status === 401) {
          this.onState("needs token");
          await askToken();
          continue;
        }
        if (!r.ok) {
          const data = await r.json().catch(() => null);
          const msg = (data && data.error && data.error.message) || "HTTP " + r.status;
          this.onState("error: " + msg);
          if (r.status < 500) return; // a request that will not get better by retrying
          throw new Error(msg);
        }
        this.onState("live");
        delay = 200;
        await this.read(r.body.getReader());
      } catch (e) {
        if (this.closed) return;
      }
      if (this.closed || this.complete) break;
      this.reconnects += 1;
      this.onState("reconnecting");
      await sleep(delay);
      delay = Math.min(delay * 2, 3000);
    }
    if (this.ctrl) this.ctrl.abort();
    if (!this.closed) this.onState(this.complete ? "ended" : "closed");
  }

  async read(reader) {
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        if (this.closed) return;
        if (this.frame(block)) {
          this.complete = true;
          reader.cancel().catch(() => {});
          return;
        }
      }
    }
  }

  frame(block) {
    let event = "message";
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line[0] === ":") continue; // comments: keep-alive, connected
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "id") id = value;
      else if (field === "data") data.push(value);
    }
    if (data.length === 0) return false;
    if (id !== null) this.lastId = id;
    return this.onFrame(event, id, data.join("\n"));
  }
}

// -- formatting ------------------------------------------------------------------
function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  seconds = Math.max(0, seconds);
  if (seconds < 1) return Math.round(seconds * 1000) + "ms";
  if (seconds < 60) return seconds.toFixed(1) + "s";
  const s = Math.floor(seconds);
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + String(Math.floor((s % 86400) / 3600)).padStart(2, "0") + "h";
}

function bytes(n) {
  if (!n) return "";
  if (n < 1 << 20) return (n / 1024).toFixed(0) + " KiB";
  return (n / (1 << 20)).toFixed(1) + " MiB";
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

// -- the turn list -----------------------------------------------------------------
const rows = new Map(); // turn_id -> {info, tr, cells}
let usage = {};

function turnMatches(info) {
  const st = $("f-status").value;
  const agent = $("f-agent").value.trim();
  const session = $("f-session").value.trim();
  return (!st || info.status === st) && (!agent || info.agent.includes(agent)) &&
    (!session || (info.session_id || "").includes(session));
}

function fillRow(row) {
  const info = row.info;
  const now = Date.now() / 1000;
  const c = row.cells;
  const live = usage[info.turn_id];
  c.status.textContent = info.status + (info.cancel_requested && !isEnded(info) ? " (cancelling)" : "");
  c.status.className = "status s-" + info.status;
  c.agent.textContent = info.agent;
  c.session.textContent = info.session_id || "";
  c.session.title = info.session_id || "";
  c.age.textContent = duration(now - info.created_at);
  c.duration.textContent = info.started_at ? duration((info.ended_at || now) - info.started_at) : "";
  c.seq.textContent = String(Math.max(info.last_seq, live ? live.last_seq : 0));
  c.pid.textContent = info.pid || "";
  c.memory.textContent = live && !isEnded(info) ? bytes(live.rss_bytes) : "";
  row.tr.hidden = !turnMatches(info);
  row.tr.classList.toggle("selected", view !== null && view.turnId === info.turn_id);
}

function isEnded(info) {
  return ["succeeded", "failed", "cancelled", "timed_out", "lost"].includes(info.status);
}

function upsert(info) {
  let row = rows.get(info.turn_id);
  if (!row) {
    const tr = document.createElement("tr");
    tr.dataset.turnId = info.turn_id;
    const cells = {};
    for (const name of ["status", "agent", "session", "age", "duration", "seq", "pid", "memory"]) {
      cells[name] = el("td", name);
      tr.appendChild(cells[name]);
    }
    tr.addEventListener("click", () => { location.hash = "#/turn/" + info.turn_id; });
    row = { info, tr, cells };
    rows.set(info.turn_id, row);
    placeRow(row);
  } else if (info.created_at !== row.info.created_at) {
    placeRow(row);
  }
  row.info = info;
  fillRow(row);
  if (view && view.turnId === info.turn_id) view.setInfo(info);
}

function placeRow(row) {
  // newest first: walk to the first row created before this one
  const tbody = document.querySelector("#turns tbody");
  const lastRow = tbody.lastElementChild && rows.get(tbody.lastElementChild.dataset.turnId);
  if (!lastRow || lastRow.info.created_at >= row.info.created_at) { // a list arrives newest first
    tbody.appendChild(row.tr);
    return;
  }
  let before = null;
  for (const tr of tbody.children) {
    const other = rows.get(tr.dataset.turnId);
    if (other && other !== row && other.info.created_at < row.info.created_at) { before = tr; break; }
  }
  tbody.insertBefore(row.tr, before);
}

function refreshList() {
  let shown = 0;
  for (const row of rows.values()) {
    fillRow(row);
    if (!row.tr.hidden) shown += 1;
  }
  $("list-count").textContent = shown + " of " + rows.size + " turns";
}

let feed = null;

function startFeed() {
  feed = new Stream("/v1/turns/events?limit=1000", null, (event, id, data) => {
    const body = JSON.parse(data);
    if (event === "snapshot") {
      const keep = new Set(body.turns.map((t) => t.turn_id));
      for (const [turnId, row] of rows) {
        if (!keep.has(turnId)) { row.tr.remove(); rows.delete(turnId); }
      }
      body.turns.forEach(upsert);
      refreshList();
    } else if (event === "turn") {
      upsert(body);
      $("list-count").textContent = [...rows.values()].filter((r) => !r.tr.hidden).length + " of " + rows.size + " turns";
    }
    return false; // the feed never completes
  }, (state) => { $("feed-state").textContent = "list: " + state; });
}

async function pollUsage() {
  const running = [...rows.values()].some((r) => ["running", "starting"].includes(r.info.status));
  if (running) {
    try { usage = (await api("/v1/turns/usage")).turns; } catch (e) { /* shown by the feed's state */ }
  } else {
    usage = {};
  }
  refreshList();
}

for (const id of ["f-status", "f-agent", "f-session"]) $(id).addEventListener("input", refreshList);

// -- the turn view -------------------------------------------------------------------
// One section per export page (and the live tail in the last one); each has its
// own renderer, so a message split across pages shows as "continued".
class Renderer {
  constructor(section, view) {
    this.section = section;
    this.view = view;
    this.messages = new Map();
    this.tools = new Map();
  }

  item(seq, cls, tag) {
    const div = el("div", "item " + cls);
    div.dataset.seq = String(seq);
    if (tag) div.appendChild(el("span", "tag", tag));
    this.section.appendChild(div);
    return div;
  }

  message(id, role, seq, continued) {
    const div = this.item(seq, "msg");
    div.dataset.messageId = id;
    if (continued) div.appendChild(el("span", "continued", "(continued)"));
    div.appendChild(el("span", "role", (role || "?") + ":"));
    const text = el("span", "text");
    const node = document.createTextNode("");
    text.appendChild(node);
    div.appendChild(text);
    const m = { div, node };
    this.messages.set(id, m);
    return m;
  }

  tool(id, name, seq, continued) {
    const div = this.item(seq, "tool", "tool call");
    div.dataset.toolCallId = id;
    if (continued) div.appendChild(el("span", "continued", "(continued)"));
    div.appendChild(el("span", "name", name || "?"));
    const args = el("pre", "args");
    const node = document.createTextNode("");
    args.appendChild(node);
    const result = el("pre", "result");
    result.hidden = true;
    div.append(args, result);
    const t = { div, node, result };
    this.tools.set(id, t);
    return t;
  }

  add(seq, e) {
    switch (e.type) {
      case "RUN_STARTED":
        this.item(seq, "run", "run").append("started");
        break;
      case "TEXT_MESSAGE_START":
        this.message(e.messageId, e.role, seq, false);
        break;
      case "TEXT_MESSAGE_CONTENT":
      case "TEXT_MESSAGE_CHUNK": {
        const m = this.messages.get(e.messageId) || this.message(e.messageId, e.role, seq, true);
        m.node.appendData(e.delta || "");
        break;
      }
      case "TEXT_MESSAGE_END":
        break;
      case "TOOL_CALL_START":
        this.tool(e.toolCallId, e.toolCallName, seq, false);
        break;
      case "TOOL_CALL_ARGS":
      case "TOOL_CALL_CHUNK": {
        const t = this.tools.get(e.toolCallId) || this.tool(e.toolCallId, e.toolCallName, seq, true);
        t.node.appendData(e.delta || "");
        break;
      }
      case "TOOL_CALL_END":
        break;
      case "TOOL_CALL_RESULT": {
        const t = this.tools.get(e.toolCallId) || this.tool(e.toolCallId, "", seq, true);
        t.result.hidden = false;
        t.result.textContent = typeof e.content === "string" ? e.content : json(e.content);
        break;
      }
      case "STATE_SNAPSHOT":
        this.view.setState(e.snapshot, false);
        this.item(seq, "state", "state snapshot").appendChild(el("pre", "", json(e.snapshot)));
        break;
      case "STATE_DELTA":
        this.view.applyDelta(e.delta);
        this.item(seq, "state", "state delta").appendChild(el("pre", "", JSON.stringify(e.delta)));
        break;
      case "MESSAGES_SNAPSHOT":
        this.item(seq, "snapshot", "messages snapshot");
        for (const m of e.messages || []) {
          if (m.role === "tool") {
            const t = this.tools.get(m.toolCallId) || this.tool(m.toolCallId, "", seq, true);
            t.result.hidden = false;
            t.result.textContent = typeof m.content === "string" ? m.content : json(m.content);
            continue;
          }
          if (m.content !== undefined && m.content !== null && m.content !== "") {
            const msg = this.message(m.id, m.role, seq, false);
            msg.node.appendData(typeof m.content === "string" ? m.content : json(m.content));
          }
          for (const call of m.toolCalls || []) {
            const fn = call.function || {};
            this.tool(call.id, fn.name, seq, false).node.appendData(fn.arguments || "");
          }
        }
        break;
      case "STEP_STARTED":
        this.item(seq, "step", "step").append("started " + (e.stepName || ""));
        break;
      case "STEP_FINISHED":
        this.item(seq, "step", "step").append("finished " + (e.stepName || ""));
        break;
      case "RUN_FINISHED": {
        const div = this.item(seq, "run", "run");
        div.append("finished: " + ((e.outcome && e.outcome.type) || "success"));
        if (e.result !== undefined && e.result !== null) div.appendChild(el("pre", "", json(e.result)));
        break;
      }
      case "RUN_ERROR":
        this.item(seq, "run-error", "error").append((e.code ? e.code + ": " : "") + (e.message || ""));
        break;
      case "CUSTOM":
        this.item(seq, "custom", "custom " + (e.name || "")).appendChild(el("pre", "", json(e.value)));
        break;
      default: // RAW and anything newer than this page
        this.item(seq, "other", e.type || "event").appendChild(el("pre", "", json(e)));
    }
  }

  gap(from, to, reason) {
    const div = el("div", "item gap", "events " + from + "-" + to + " are missing" + (reason ? ": " + reason : ""));
    div.dataset.gapFrom = String(from);
    div.dataset.gapTo = String(to);
    this.section.appendChild(div);
  }
}

class TurnView {
  constructor(turnId) {
    this.turnId = turnId;
    this.first = null; // lowest seq shown
    this.noEarlier = false;
    this.last = 0; // highest seq shown
    this.info = null;
    this.stream = null;
    this.closed = false;
    this.state = null;
    this.tail = null;
    const pane = $("turn-pane");
    pane.hidden = false;
    pane.dataset.turnId = turnId;
    pane.dataset.lastSeq = "0";
    pane.dataset.reconnects = "0";
    $("turn-title").textContent = turnId;
    $("turn-status").textContent = "";
    $("stream-state").textContent = "loading";
    $("turn-range").textContent = "";
    $("transcript").replaceChildren();
    $("state").textContent = "";
    $("output-box").hidden = true;
    $("action-error").textContent = "";
    $("load-earlier").hidden = true;
    this.open();
  }

  close() {
    this.closed = true;
    if (this.stream) this.stream.close();
    this.stream = null;
  }

  setInfo(info) {
    this.info = info;
    $("turn-status").textContent = info.status + (info.error ? " (" + info.error.code + ")" : "");
    $("turn-status").className = "status s-" + info.status;
    $("cancel").disabled = isEnded(info);
  }

  setState(value) {
    this.state = value;
    $("state").textContent = json(value);
  }

  applyDelta(ops) {
    try {
      this.setState(applyPatch(this.state, ops));
    } catch (e) {
      $("state").textContent = json(this.state) + "\n(a delta could not be applied: " + e.message + ")";
    }
  }

  async open() {
    try {
      this.setInfo(await api("/v1/turns/" + this.turnId));
      const page = await api("/v1/turns/" + this.turnId + "/export?limit=" + PAGE);
      if (this.closed) return;
      this.tail = new Renderer(this.section(false), this);
      this.renderPage(this.tail, page);
      if (this.first === null) this.first = this.last + 1;
      this.updateEarlier();
      this.follow();
    } catch (e) {
      if (!this.closed) $("stream-state").textContent = "error: " + e.message;
    }
  }

  section(prepend) {
    const s = el("section", "page");
    const t = $("transcript");
    if (prepend) t.insertBefore(s, t.firstChild); else t.appendChild(s);
    return s;
  }

  renderPage(renderer, page) {
    this.notes(renderer, page);
    for (const e of page.events) {
      if (this.first === null || e.seq < this.first) this.first = e.seq;
      renderer.add(e.seq, e);
      if (e.seq > this.last) this.last = e.seq;
    }
    this.showRange();
  }

  notes(renderer, page) {
    if (page.gap) {
      const missing = page.gap.missing || {};
      renderer.gap(missing.from, missing.to, page.gap.reason);
    }
    if (page.compacted) {
      const note = el("div", "item continued", "the snapshot form: the full event log was removed by retention");
      renderer.section.appendChild(note);
    }
  }

  showRange() {
    $("turn-pane").dataset.lastSeq = String(this.last);
    $("turn-range").textContent = this.last ? "events " + (this.first || 1) + "-" + this.last : "no events yet";
  }

  updateEarlier() {
    const button = $("load-earlier");
    const before = (this.first || 1) - 1;
    button.hidden = before <= 0 || this.noEarlier;
    button.textContent = "load earlier events (" + before + " before seq " + this.first + ")";
  }

  async loadEarlier() {
    const before = this.first - 1;
    if (before <= 0) return;
    const count = Math.min(PAGE, before);
    const page = await api("/v1/turns/" + this.turnId + "/export?after=" + (before - count) + "&limit=" + count);
    if (this.closed) return;
    const events = page.events.filter((e) => e.seq < this.first);
    const renderer = new Renderer(this.section(true), this);
    this.notes(renderer, page);
    for (const e of events) renderer.add(e.seq, e);
    if (events.length) this.first = events[0].seq;
    // nothing older to ask for once the log says what is missing, or has nothing before
    this.noEarlier = Boolean(page.gap) || !events.length;
    this.showRange();
    this.updateEarlier();
  }

  follow() {
    if (this.info && isEnded(this.info) && this.last >= this.info.last_seq) {
      $("stream-state").textContent = "ended";
      return;
    }
    // never more than one stream per view: the old one is closed before a new one opens
    if (this.stream) this.stream.close();
    this.stream = new Stream("/v1/turns/" + this.turnId + "/events", this.last, (event, id, data) => {
      if (event === "gap") {
        const g = JSON.parse(data);
        this.tail.gap(this.last + 1, "?", g.reason);
        return true;
      }
      if (event === "shutdown") return false;
      const e = JSON.parse(data);
      const seq = e.seq;
      if (seq <= this.last) return false; // already shown: never a duplicate
      if (seq > this.last + 1) this.tail.gap(this.last + 1, seq - 1, "not received");
      this.tail.add(seq, e);
      this.last = seq;
      this.showRange();
      if (TERMINAL.has(e.type)) {
        api("/v1/turns/" + this.turnId).then((info) => this.setInfo(info)).catch(() => {});
        return true;
      }
      return false;
    }, (state) => {
      if (this.closed) return;
      $("stream-state").textContent = state;
      $("turn-pane").dataset.reconnects = String(this.stream ? this.stream.reconnects : 0);
    });
  }
}

// RFC 6902 add / remove / replace / move / copy / test, enough to show the state
function applyPatch(doc, ops) {
  let root = structuredClone(doc === undefined ? null : doc);
  const parse = (path) => path.split("/").slice(1).map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
  const get = (path) => parse(path).reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), root);
  const put = (path, value, insert) => {
    const keys = parse(path);
    if (keys.length === 0) { root = value; return; }
    const parent = keys.slice(0, -1).reduce((o, k) => o[k], root);
    const key = keys[keys.length - 1];
    if (Array.isArray(parent)) {
      const i = key === "-" ? parent.length : Number(key);
      if (insert) parent.splice(i, 0, value); else parent[i] = value;
    } else parent[key] = value;
  };
  const remove = (path) => {
    const keys = parse(path);
    const parent = keys.slice(0, -1).reduce((o, k) => o[k], root);
    const key = keys[keys.length - 1];
    if (Array.isArray(parent)) parent.splice(Number(key), 1); else delete parent[key];
  };
  for (const op of ops || []) {
    if (op.op === "add") put(op.path, structuredClone(op.value), true);
    else if (op.op === "replace") put(op.path, structuredClone(op.value), false);
    else if (op.op === "remove") remove(op.path);
    else if (op.op === "copy") put(op.path, structuredClone(get(op.from)), true);
    else if (op.op === "move") { const v = get(op.from); remove(op.from); put(op.path, v, true); }
    else if (op.op === "test") { /* nothing to change */ }
    else throw new Error("unknown op " + op.op);
  }
  return root;
}

let view = null;

function route() {
  const m = /^#\/turn\/([0-9A-Za-z]{26})$/.exec(location.hash);
  const turnId = m ? m[1] : null;
  if (view && view.turnId === turnId) return;
  if (view) view.close();
  view = turnId ? new TurnView(turnId) : null;
  if (!view) $("turn-pane").hidden = true;
  refreshList();
}

window.addEventListener("hashchange", route);
// Leaving the page (or the back/forward cache freezing it) must not leave streams
// open on the daemon; coming back from that cache opens them again.
window.addEventListener("pagehide", () => {
  if (feed) feed.close();
  if (view) view.close();
  view = null;
});
window.addEventListener("pageshow", (e) => {
  if (!e.persisted) return;
  startFeed();
  route();
});
$("load-earlier").addEventListener("click", () => { if (view) view.loadEarlier().catch((e) => { $("action-error").textContent = e.message; }); });

// -- actions ---------------------------------------------------------------------------
$("start-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("start-error").textContent = "";
  let input;
  try {
    input = JSON.parse($("start-input").value || "null");
  } catch (err) {
    $("start-error").textContent = "input is not valid JSON: " + err.message;
    return;
  }
  const body = { agent: $("start-agent").value, input };
  const session = $("start-session").value.trim();
  if (session) body.session_id = session;
  try {
    const info = await api("/v1/turns", body);
    upsert(info);
    location.hash = "#/turn/" + info.turn_id;
  } catch (err) {
    $("start-error").textContent = err.message;
  }
});

$("cancel").addEventListener("click", async () => {
  if (!view) return;
  try {
    view.setInfo(await api("/v1/turns/" + view.turnId + "/cancel", { reason: "cancelled from the console" }));
  } catch (err) {
    $("action-error").textContent = err.message;
  }
});

async function download(format) {
  if (!view) return;
  const turnId = view.turnId;
  const events = [];
  let after = 0;
  let page;
  do { // page by page: a long history is never asked for in one answer
    page = await api("/v1/turns/" + turnId + "/export?limit=10000&after=" + after);
    events.push(...page.events);
    after = page.next_after;
  } while (page.truncated && page.events.length);
  const text = format === "json"
    ? JSON.stringify({ turn: page.turn, events, total: page.total }, null, 2)
    : events.map((e) => JSON.stringify(e)).join("\n") + "\n";
  const url = URL.createObjectURL(new Blob([text], { type: format === "json" ? "application/json" : "application/x-ndjson" }));
  const a = el("a");
  a.href = url;
  a.download = turnId + "." + format;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

$("dl-json").addEventListener("click", () => download("json").catch((e) => { $("action-error").textContent = e.message; }));
$("dl-jsonl").addEventListener("click", () => download("jsonl").catch((e) => { $("action-error").textContent = e.message; }));

$("show-output").addEventListener("click", async () => {
  if (!view) return;
  const box = $("output-box");
  if (!box.hidden) { box.hidden = true; return; }
  try {
    const out = await api("/v1/turns/" + view.turnId + "/output?limit=65536");
    $("output").textContent = out.text;
    const more = out.size > out.next_offset ? ", showing the first " + bytes(out.next_offset) : "";
    $("output-note").textContent = bytes(out.size) + " kept" + more + (out.dropped ? ", " + out.dropped + " bytes over the cap not kept" : "") + (out.size ? "" : "(no output)");
    box.hidden = false;
  } catch (err) {
    $("action-error").textContent = err.message;
  }
});

// -- start ---------------------------------------------------------------------------------
async function init() {
  const agents = (await api("/v1/agents")).agents;
  const select = $("start-agent");
  select.replaceChildren(...agents.map((a) => el("option", "", a.name)));
  route(); // a linked turn's requests go out before the list's (larger) snapshot
  startFeed();
  setInterval(pollUsage, 2000);
}

init().catch((e) => { $("feed-state").textContent = "error: " + e.message; });
