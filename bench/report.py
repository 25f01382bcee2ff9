"""Results out: one JSON line per workload on stdout, and a Markdown summary."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Result


def emit(result: Result, jsonl: Path) -> None:
    line = json.dumps(result, separators=(",", ":"))
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    with jsonl.open("a") as f:
        f.write(line + "\n")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


WORST_OF = {
    "lost",
    "seq_gaps",
    "unacked_delivered",
    "never_back",
    "duplicated",
    "reordered",
    "send_errors",
    "disconnects",
    "failed",
    "failed_runs",
    "closed",
    "timeout",
    "error",
}


def median_of(values: list[Any], key: str = "") -> Any:
    """The median of every numeric leaf across repeated runs (the worst for error counts,
    so a loss in one run is never hidden); other leaves from the first run."""
    first = values[0]
    if all(_is_number(v) for v in values):
        if key in WORST_OF:
            return max(values)
        m = statistics.median(values)
        return round(m, 3) if isinstance(m, float) else m
    if all(isinstance(v, dict) for v in values):
        return {k: median_of([v[k] for v in values if k in v], k) for k in first}
    if all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
        return [median_of(list(items), key) for items in zip(*values, strict=True)]
    if all(isinstance(v, bool) for v in values) and isinstance(first, bool):
        return all(values) if first else any(values)
    return first


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if value < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _lat(result: Result, key: str) -> str:
    lat = result.get("latency_ms")
    return _fmt(lat.get(key)) if isinstance(lat, dict) else "-"


def _notes(r: Result) -> str:
    w = r.get("workload")
    notes: list[str] = []
    if w == "W2":
        notes.append(f"drain {_fmt(r.get('seconds'))} s, correct={r.get('correct')}")
    if w == "W3":
        notes.append(
            f"{_fmt(r.get('connected'))}/{_fmt(r.get('connections'))} connected in "
            f"{_fmt(r.get('connect_s'))} s ({_fmt(r.get('connect_ms_per_conn'))} ms/conn), "
            f"alive after hold {_fmt(r.get('alive_after_hold'))}, "
            f"server RSS {_fmt(r.get('server_rss_kib_per_conn'))} KiB/conn"
        )
    if w == "W3C":
        notes.append(
            f"{_fmt(r.get('connected'))}/{_fmt(r.get('connections'))} connected over "
            f"{_fmt(r.get('nodes'))} nodes in {_fmt(r.get('connect_s'))} s, "
            f"alive after hold {_fmt(r.get('alive_after_hold'))}, server RSS "
            f"{_fmt(r.get('server_rss_kib_per_conn_mean'))} KiB/conn (mean of nodes)"
        )
    if w == "W1C":
        notes.append(f"{_fmt(r.get('nodes'))} nodes, every message across NATS")
    if w == "W5":
        for p in r.get("phases", []):
            lat = p.get("latency_ms", {})
            notes.append(
                f"{_fmt(p.get('target_msg_per_s'))} msg/s: p50 {_fmt(lat.get('p50'))} / "
                f"p99 {_fmt(lat.get('p99'))} / max {_fmt(lat.get('max'))} ms"
            )
    if w == "R1":
        lat = r.get("reconnect_after_restart_ms") or {}
        notes.append(
            f"{_fmt(r.get('back'))}/{_fmt(r.get('clients'))} back "
            f"{_fmt(r.get('restart_to_all_back_s'))} s after the restart (per client p50 "
            f"{_fmt(lat.get('p50'))} / p99 {_fmt(lat.get('p99'))} ms), "
            f"{_fmt(r.get('messages_acknowledged'))} msgs acknowledged, "
            f"seq gaps {_fmt(r.get('seq_gaps'))}, send errors {_fmt(r.get('send_errors'))}"
        )
    if w == "S1":
        notes.append(f"{_fmt(r.get('cpu_s_per_100k'))} CPU-s per 100K in-process")
    if w == "S1G":
        notes.append(
            f"{_fmt(r.get('members'))} members: {_fmt(r.get('member_deliveries_per_s'))} "
            f"deliveries/s, {_fmt(r.get('wal_bytes_per_group_message'))} B of WAL and "
            f"{_fmt(r.get('table_bytes_per_group_message_total'))} B of tables per message"
        )
    if w == "P1":
        for store, f in (r.get("stores") or {}).items():
            lat = f.get("latency_ms", {})
            notes.append(
                f"{store}: {_fmt(r.get('users'))} users, search p50 {_fmt(lat.get('p50'))} / "
                f"p99 {_fmt(lat.get('p99'))} ms, {_fmt(f.get('searches_per_s'))}/s one at a time"
            )
    if w == "P2":
        notes.append(
            f"{_fmt(r.get('contacts'))} contacts: {_fmt(r.get('storm_frames_per_connect'))} "
            f"frames and {_fmt(r.get('storm_cpu_ms_per_connect'))} CPU-ms per reconnect in a "
            f"storm; {_fmt(r.get('frames_per_change'))} frames and "
            f"{_fmt(r.get('cpu_ms_per_change'))} CPU-ms per real change"
        )
    if w == "W4":
        notes.append(f"store of {_fmt(r.get('store_messages'))} messages, {r.get('pages')} pages")
    if r.get("error"):
        notes.append(f"error: {str(r['error']).splitlines()[-1][:120]}")
    if r.get("timed_out"):
        notes.append("timed out")
    return "; ".join(notes)


def write_summary(results: list[Result], path: Path, meta: Result) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Courier benchmark",
        "",
        f"- when: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"- mode: {'quick' if meta.get('quick') else 'full'}, repeat {meta.get('repeat', 1)}"
        " (median figures)",
        f"- server: {meta.get('server')}",
        "",
        "| workload | msgs | msg/s | p50 ms | p99 ms | max ms | lost | dup | reord "
        "| server CPU-s/100K | driver CPU-s | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        cells = [
            str(r.get("workload")),
            _fmt(r.get("msgs")),
            _fmt(r.get("msg_per_s")),
            _lat(r, "p50"),
            _lat(r, "p99"),
            _lat(r, "max"),
            _fmt(r.get("lost")),
            _fmt(r.get("duplicated")),
            _fmt(r.get("reordered")),
            _fmt(r.get("server_cpu_s_per_100k")),
            _fmt(r.get("driver_cpu_s")),
            _notes(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Raw figures", "", "```json"]
    lines += [json.dumps(r) for r in results]
    lines += ["```", ""]
    path.write_text("\n".join(lines))
