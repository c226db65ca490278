"""``runnerctl``: a thin click layer over ``Client`` (and ``runnerd`` for ``serve``).

Human output on a terminal; JSON with ``--json`` or when stdout is piped.
Exit codes: 0 ok, 1 the turn did not succeed, 2 bad input, 3 daemon not
running, 4 unknown turn or agent.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
import msgspec

from ipc import events as ev
from supervisor import errors
from supervisor.config import default_socket_path, default_state_dir
from supervisor.control.client import Client, DaemonUnavailable
from supervisor.turns import TurnInfo, TurnStatus

EXIT_TURN_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NOT_FOUND = 1, 2, 3, 4


class Ctx:
    def __init__(self, socket: str | None, url: str | None, as_json: bool | None) -> None:
        self.socket = socket
        self.url = url
        self.json = as_json if as_json is not None else not sys.stdout.isatty()
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(socket=self.socket, url=self.url)
        return self._client


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"runnerctl: {message}", err=True)
    sys.exit(code)


def _guard(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every error becomes one clear line and an exit code."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DaemonUnavailable as exc:
            _fail(str(exc), EXIT_UNAVAILABLE)
        except (errors.UnknownTurn, errors.UnknownAgent) as exc:
            _fail(str(exc), EXIT_NOT_FOUND)
        except errors.RunnerdError as exc:
            _fail(str(exc), EXIT_USAGE)
        except TimeoutError as exc:
            _fail(str(exc), EXIT_TURN_FAILED)
    return wrapper


def _json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--json/--no-json`` after the subcommand too (``runnerctl list --json``)."""
    def apply(cctx: click.Context, _: click.Parameter, value: bool | None) -> None:
        if value is not None:
            cctx.find_object(Ctx).json = value  # type: ignore[union-attr]

    return click.option("--json/--no-json", "as_json", default=None, expose_value=False, callback=apply,
                        is_eager=True, help="JSON output (default when piped).")(func)


def _out_json(value: Any) -> None:
    click.echo(msgspec.json.encode(value).decode())


def _show_info(ctx: Ctx, info: TurnInfo) -> None:
    if ctx.json:
        _out_json(info)
        return
    err = f"  {info.error.code}: {info.error.message}" if info.error else ""
    click.echo(f"{info.turn_id}  {info.agent:<12} {info.status.value:<10} seq={info.last_seq}{err}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", envvar="RUNNERD_SOCKET", help="Daemon socket (default: the per-user runtime dir).")
@click.option("--url", envvar="RUNNERD_URL", help="Daemon URL instead of the socket (token: $RUNNERD_TOKEN).")
@click.option("--json/--no-json", "as_json", default=None, help="JSON output (default when piped).")
@click.pass_context
def main(cctx: click.Context, socket: str | None, url: str | None, as_json: bool | None) -> None:
    """Drive runnerd: start, follow, export and cancel agent turns."""
    cctx.obj = Ctx(socket, url, as_json)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--state-dir", help="State directory (overrides the config).")
@click.pass_obj
def serve(ctx: Ctx, config_path: str | None, state_dir: str | None) -> None:
    """Run the daemon in the foreground (same as `runnerd`)."""
    from supervisor.server.daemon import StartupError, resolve_config, run

    try:
        config = resolve_config(config_path)
    except StartupError as exc:
        _fail(str(exc), EXIT_USAGE)
    if ctx.socket:
        config.server.socket = ctx.socket
    if state_dir:
        config.state_dir = state_dir
    sys.exit(run(config))


def _parse_input(raw: str | None) -> Any:
    if raw is None:
        return None
    if raw == "-":
        text = sys.stdin.read()
    elif raw.startswith("@"):
        try:
            text = Path(raw[1:]).read_text()
        except OSError as exc:
            _fail(f"cannot read input file {raw[1:]}: {exc.strerror}", EXIT_USAGE)
    else:
        text = raw
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        _fail(f"--input is not valid JSON: {exc}", EXIT_USAGE)


@main.command()
@click.argument("agent")
@click.option("--input", "input_", help="JSON input, @file, or - for stdin.")
@click.option("--session", help="Session id (one active turn per session).")
@click.option("--timeout", type=float, help="Wall timeout in seconds.")
@click.option("--multitask", type=click.Choice(["reject", "enqueue", "interrupt"]), default="reject",
              show_default=True, help="When the session already has an active turn.")
@click.option("--follow", is_flag=True, help="Stream the turn's events until it ends.")
@_json_option
@click.pass_obj
@_guard
def start(ctx: Ctx, agent: str, input_: str | None, session: str | None, timeout: float | None,
          multitask: str, follow: bool) -> None:
    """Start AGENT; print the turn (and follow it with --follow)."""
    info = ctx.client.start_turn(agent, _parse_input(input_), session_id=session, timeout_s=timeout,
                                 multitask=multitask)
    if not follow:
        if ctx.json:
            _out_json(info)
        else:
            click.echo(info.turn_id)
        return
    if not ctx.json:
        click.echo(f"turn {info.turn_id} ({agent})", err=True)
    sys.exit(_follow(ctx, info.turn_id, 0))


@main.command()
@click.argument("turn_id")
@click.option("--after", type=int, default=0, show_default=True, help="Resume after this seq.")
@_json_option
@click.pass_obj
@_guard
def follow(ctx: Ctx, turn_id: str, after: int) -> None:
    """Stream a turn's events live (resumes after a dropped connection)."""
    sys.exit(_follow(ctx, turn_id, after))


def _follow(ctx: Ctx, turn_id: str, after: int) -> int:
    stream = ctx.client.raw_events(turn_id, after=after)
    if ctx.json:
        for _, data in stream:
            click.echo(data.decode())
    else:
        render(((seq, ev.decode_event(data)) for seq, data in stream), sys.stdout)
    info = ctx.client.status(turn_id)
    return 0 if info.status is TurnStatus.SUCCEEDED else EXIT_TURN_FAILED


def render(events: Iterator[tuple[int, ev.Event]], out: Any) -> None:
    """Human rendering: text as it streams, tool calls, and how the run ended."""
    args: dict[str, str] = {}
    names: dict[str, str] = {}
    for _, e in events:
        if isinstance(e, ev.TextMessageStart):
            out.write(f"\n{e.role}: ")
        elif isinstance(e, ev.TextMessageContent):
            out.write(e.delta)
        elif isinstance(e, ev.TextMessageEnd):
            out.write("\n")
        elif isinstance(e, ev.ToolCallStart):
            names[e.tool_call_id] = e.tool_call_name
            args[e.tool_call_id] = ""
        elif isinstance(e, ev.ToolCallArgs):
            args[e.tool_call_id] = args.get(e.tool_call_id, "") + e.delta
        elif isinstance(e, ev.ToolCallEnd):
            out.write(f"[tool] {names.get(e.tool_call_id, '?')}({args.get(e.tool_call_id, '')})\n")
        elif isinstance(e, ev.ToolCallResult):
            out.write(f"[tool] -> {e.content}\n")
        elif isinstance(e, ev.StepStarted):
            out.write(f"[step] {e.step_name}\n")
        elif isinstance(e, ev.RunFinished):
            out.write(f"\n[run] finished: {e.outcome.type}\n")
        elif isinstance(e, ev.RunError):
            out.write(f"\n[run] error {e.code}: {e.message}\n")
        out.flush()


@main.command()
@click.argument("turn_id")
@click.option("--reason", help="Recorded with the turn.")
@click.option("--wait", "wait_", is_flag=True, help="Wait until the turn has ended.")
@_json_option
@click.pass_obj
@_guard
def cancel(ctx: Ctx, turn_id: str, reason: str | None, wait_: bool) -> None:
    """Cancel a turn (idempotent): token, then SIGTERM, then SIGKILL of its tree."""
    info = ctx.client.cancel(turn_id, reason=reason)
    if wait_:
        info = ctx.client.wait(turn_id)
    _show_info(ctx, info)


@main.command()
@click.argument("turn_id")
@_json_option
@click.pass_obj
@_guard
def status(ctx: Ctx, turn_id: str) -> None:
    """Show a turn's status."""
    info = ctx.client.status(turn_id)
    if ctx.json:
        _out_json(info)
        return
    for field, value in human_status(info, time.time()):
        click.echo(f"{field:<16} {value}")


_TIMES = ("created_at", "started_at", "ended_at", "pid_create_time")


def human_status(info: TurnInfo, now: float) -> list[tuple[str, str]]:
    """A turn's fields for a terminal: epoch times as local dates, and how long it ran."""
    rows: list[tuple[str, str]] = []
    for field in info.__struct_fields__:
        value = getattr(info, field)
        if value is None:
            continue
        if field in _TIMES:
            text = f"{_date(value)} ({format_duration(now - value)} ago)"
        elif field == "timeout_s":
            text = format_duration(value)
        elif isinstance(value, TurnStatus):
            text = value.value
        else:
            text = str(value)
        rows.append((field, text))
        if field == "ended_at" and info.started_at is not None:
            rows.append(("duration", format_duration(value - info.started_at)))
    if info.started_at is not None and info.ended_at is None:
        rows.append(("running for", format_duration(now - info.started_at)))
    return rows


def _date(epoch: float) -> str:
    """Local time with milliseconds and the zone: ``2026-12-02 05:43:01.910 UTC``."""
    d = datetime.datetime.fromtimestamp(epoch).astimezone()
    return f"{d:%Y-%m-%d %H:%M:%S}.{d.microsecond // 1000:03d} {d:%Z}"


def format_duration(seconds: float) -> str:
    """``850ms``, ``12.3s``, ``4m05s``, ``2h03m``, ``3d04h``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


@main.command("list")
@click.option("--status", "status_", help="Only turns with this status.")
@click.option("--session", help="Only turns of this session.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--watch", is_flag=True, help="Then print each status change as it happens (Ctrl-C ends).")
@_json_option
@click.pass_obj
@_guard
def list_(ctx: Ctx, status_: str | None, session: str | None, limit: int, watch: bool) -> None:
    """List turns, newest first."""
    if watch:
        _watch(ctx, status_, session, limit)
        return
    turns = ctx.client.list_turns(status=status_, session_id=session, limit=limit)
    if ctx.json:
        _out_json(turns)
        return
    for info in turns:
        _show_info(ctx, info)


def _watch(ctx: Ctx, status: str | None, session: str | None, limit: int) -> None:
    """The list, then one line per status change (JSON: one TurnInfo per line)."""
    if status is not None and status not in {s.value for s in TurnStatus}:
        _fail(f"unknown status {status!r}; one of {', '.join(s.value for s in TurnStatus)}", EXIT_USAGE)
    try:
        for item in ctx.client.turn_changes(session_id=session, limit=limit):
            for info in item if isinstance(item, list) else [item]:
                if status is not None and info.status.value != status:
                    continue
                if ctx.json:
                    _out_json(info)
                else:
                    click.echo(f"{time.strftime('%H:%M:%S')}  " if not isinstance(item, list) else "", nl=False)
                    _show_info(ctx, info)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("turn_id")
@click.option("--limit", type=int, default=200, show_default=True, help="At most this many events.")
@click.option("--after", type=int, help="Events after this seq (default: the tail).")
@click.option("--format", "fmt", type=click.Choice(["json", "jsonl", "text"]), default=None,
              help="json: the whole page; jsonl: one event per line; text: rendered.")
@click.option("--compact", is_flag=True, help="A finished turn's snapshot form.")
@_json_option
@click.pass_obj
@_guard
def export(ctx: Ctx, turn_id: str, limit: int, after: int | None, fmt: str | None, compact: bool) -> None:
    """Print a turn's history as plain JSON; never waits, even while the turn runs."""
    page = ctx.client.export(turn_id, limit=limit, after=after, compact=compact)
    if not isinstance(page.gap, msgspec.UnsetType) and not ctx.json:
        click.echo(f"gap: {page.gap.reason}", err=True)
    fmt = fmt or ("json" if ctx.json else "text")
    if fmt == "json":
        _out_json(page)
    elif fmt == "jsonl":
        for raw in page.events:
            click.echo(bytes(raw).decode())
    else:
        render(iter(page.items()), sys.stdout)
        more = f", more after seq {page.next_after}" if page.truncated and after is not None else ""
        click.echo(f"\n{page.returned} of {page.total} events (turn {page.turn.status.value}){more}")


@main.command()
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@_json_option
@click.pass_obj
@_guard
def prune(ctx: Ctx, dry_run: bool) -> None:
    """Apply the retention limits now: remove the oldest finished turns first."""
    report = ctx.client.prune(dry_run=dry_run)
    if ctx.json:
        _out_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(report['removed'])} turns and {len(report['raw_removed'])} full logs "
               f"({report['bytes_freed']} bytes)")
    for turn_id in report["removed"]:
        click.echo(f"  {turn_id}")


@main.command()
@_json_option
@click.pass_obj
@_guard
def agents(ctx: Ctx) -> None:
    """List the configured agents."""
    names = ctx.client.agents()
    if ctx.json:
        _out_json(names)
    else:
        click.echo("\n".join(names))


@main.command()
@click.option("--wait/--no-wait", "wait_", default=True, show_default=True,
              help="Wait until the daemon no longer answers.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="How long to wait.")
@_json_option
@click.pass_obj
@_guard
def shutdown(ctx: Ctx, wait_: bool, timeout: float) -> None:
    """Stop the daemon gracefully (as SIGTERM does: streams end, running turns are cancelled)."""
    answer = ctx.client.shutdown()
    if wait_:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ctx.client.health()
            except DaemonUnavailable:
                answer = {**answer, "status": "stopped"}
                break
            except errors.RunnerdError:
                pass  # 503 while it is shutting down
            time.sleep(0.05)  # polling for the daemon to go away, bounded by the deadline
        else:
            _fail(f"runnerd (pid {answer.get('pid')}) still answers after {timeout:g} s", EXIT_TURN_FAILED)
    if ctx.json:
        _out_json(answer)
    else:
        click.echo(f"runnerd (pid {answer.get('pid')}) {answer['status']}")


@main.command()
@click.option("--prompt", default="what is runnerd?", show_default=True)
@_json_option
@click.pass_obj
@_guard
def demo(ctx: Ctx, prompt: str) -> None:
    """Run the demo agent end to end, starting a background daemon if none answers."""
    started = _ensure_daemon(ctx)
    info = ctx.client.start_turn("demo", {"prompt": prompt})
    click.echo(f"started turn {info.turn_id}; following it live:", err=True)
    code = _follow(ctx, info.turn_id, 0)
    page = ctx.client.export(info.turn_id, limit=1000)
    kinds = Counter(_Typed.decode(bytes(raw)).type for raw in page.events)  # the AG-UI names
    summary = {"turn": page.turn.turn_id, "status": page.turn.status.value, "events": page.total,
               "by_type": dict(sorted(kinds.items()))}
    if ctx.json:
        click.echo("export: " + msgspec.json.encode(summary).decode(), err=True)
    else:
        click.echo(f"\nexport of turn {page.turn.turn_id}: {page.turn.status.value}, {page.total} events", err=True)
        for kind, n in sorted(kinds.items()):
            click.echo(f"  {kind:<22} {n}", err=True)
        click.echo(f"the whole history: runnerctl export {page.turn.turn_id}", err=True)
    if started is not None:
        click.echo(f"runnerd is running in the background (pid {started}); stop it with: runnerctl shutdown",
                   err=True)
    sys.exit(code)


class _TypeOnly(msgspec.Struct):
    type: str


_Typed = msgspec.json.Decoder(_TypeOnly)


def _ensure_daemon(ctx: Ctx) -> int | None:
    """Start ``runnerd`` with the embedded defaults unless one already answers."""
    try:
        ctx.client.health()
        return None
    except DaemonUnavailable:
        if ctx.url:
            raise
    socket = ctx.socket or default_socket_path()
    log_dir = Path(default_state_dir())
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "runnerd.log"
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.server.daemon", "--socket", socket],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _fail(f"runnerd exited with code {proc.returncode}; see {log_path}", EXIT_UNAVAILABLE)
        try:
            ctx.client.health()
            click.echo(f"started runnerd (pid {proc.pid}, socket {socket}, log {log_path})", err=True)
            return proc.pid
        except DaemonUnavailable:
            time.sleep(0.05)  # polling the daemon's readiness, bounded by the deadline
    _fail(f"runnerd did not become ready within 20 s; see {log_path}", EXIT_UNAVAILABLE)


if __name__ == "__main__":
    main()
