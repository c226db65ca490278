"""History over HTTP and the CLI: compact export, prune, and the SSE gap frame."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import wait_for
from daemon_fixture import start_daemon


@pytest.mark.timeout(60)
def test_compact_export_prune_and_gap_frames(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, retention={"max_turns": 1, "keep_raw_s": 0.0, "interval_s": 3600.0})
    try:
        with d.http() as c:
            ids = []
            for _ in range(2):
                tid = c.post("/v1/turns", json={"agent": "demo", "input": {"delay": 0}}).json()["turn_id"]
                c.get(f"/v1/turns/{tid}/events")  # follow to the end
                ids.append(tid)
            wait_for(lambda: all(c.get(f"/v1/turns/{t}").json()["compaction"] == "done" for t in ids))
            page = c.get(f"/v1/turns/{ids[1]}/export", params={"compact": "true"}).json()
            assert page["compacted"] is True and "gap" not in page
            assert [e["type"] for e in page["events"]][3:5] == ["MESSAGES_SNAPSHOT", "STATE_SNAPSHOT"]
            sse = c.get(f"/v1/turns/{ids[1]}/events", params={"compact": "true"}).text
            assert sse.count("\nid: ") + sse.startswith("id: ") == 6
            assert c.get(f"/v1/turns/{ids[1]}/export", params={"compact": "maybe"}).status_code == 400

        dry = d.ctl("prune", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        report = json.loads(dry.stdout)
        assert report["dry_run"] and report["removed"] == [ids[0]] and report["raw_removed"] == [ids[1]]
        assert json.loads(d.ctl("prune").stdout)["removed"] == [ids[0]]
        assert d.ctl("status", ids[0]).returncode == 4

        with d.http() as c:
            sse = c.get(f"/v1/turns/{ids[1]}/events", headers={"Last-Event-ID": "5"}).text
            head, _, rest = sse.partition("\n\n")
            assert head.startswith("event: gap\ndata: ")
            gap = json.loads(head.split("data: ", 1)[1])
            assert gap["after"] == 5 and gap["missing"] == {"from": 6, "to": 40}
            assert gap["form"] == "compacted" and "retention removed" in gap["reason"]
            assert '"type":"RUN_FINISHED"' in rest
            page = c.get(f"/v1/turns/{ids[1]}/export", params={"after": 5}).json()
            assert page["gap"]["missing"] == {"from": 6, "to": 40} and page["compacted"]
        from supervisor.control.client import Client
        from supervisor.errors import HistoryGap
        with Client(socket=d.socket) as client:
            with pytest.raises(HistoryGap, match="retention removed") as err:
                list(client.events(ids[1], after=5))
            assert (err.value.status, err.value.code) == (410, "history_gap")  # the iterator's 410
            snap = [type(e).__name__ for _, e in client.events(ids[1], after=5, compact=True)]
            assert snap[-1] == "RunFinished" and "MessagesSnapshot" in snap
    finally:
        assert d.stop() == 0
