"""Prometheus metrics from the catalog and status: `insite-console metrics` prints the text
exposition, `--textfile PATH` writes it for node_exporter's textfile collector.

The registry is filled at each call by a collector, so the numbers are those of the catalog
now (a scrape or a cron run), and prometheus_client writes the format and the atomic file."""

from __future__ import annotations

from typing import Any

from insite_console import clock, status


def registry(ws, rows: list[dict[str, Any]] | None = None):
    """A CollectorRegistry holding the current metrics (rows: status.overview, if at hand)."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(ws, rows))
    return reg


def exposition(ws) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry(ws))


def write_textfile(ws, path: str) -> None:
    """Write to a temporary file beside PATH, then rename it over PATH: the collector never
    reads half a file."""
    from prometheus_client import write_to_textfile

    write_to_textfile(path, registry(ws))


class _Collector:
    def __init__(self, ws, rows):
        self.ws, self.rows = ws, rows

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ws = self.ws
        rows = self.rows if self.rows is not None else status.overview(ws)
        success = GaugeMetricFamily("insite_backup_last_success_timestamp_seconds",
                                    "When the newest successful backup of the policy finished (Unix time)",
                                    labels=["policy"])
        duration = GaugeMetricFamily("insite_backup_last_duration_seconds",
                                     "How long the newest successful backup of the policy took", labels=["policy"])
        stored = GaugeMetricFamily("insite_backup_last_bytes_stored",
                                   "New bytes the newest successful backup of the policy stored", labels=["policy"])
        failures = CounterMetricFamily("insite_backup_failures",
                                       "Failed backups of the policy recorded in this catalog (never decreases)",
                                       labels=["policy"])
        rpo = GaugeMetricFamily("insite_policy_rpo_seconds", "The policy's RPO target", labels=["policy"])
        lag = GaugeMetricFamily("insite_wal_archive_lag_seconds",
                                "Age of the newest archived WAL of a physical PostgreSQL source", labels=["source"])
        streaming = GaugeMetricFamily("insite_wal_stream_running",
                                      "1 while a wal-stream (pg_receivewal) process streams the source, 0 when the "
                                      "one seen before stopped, is gone or missed its heartbeat; absent if none ran",
                                      labels=["source"])
        beat_at = GaugeMetricFamily("insite_wal_stream_last_heartbeat_timestamp_seconds",
                                    "When the source's newest wal-stream heartbeat was recorded (Unix time)",
                                    labels=["source"])
        beat_age = GaugeMetricFamily("insite_wal_stream_heartbeat_age_seconds",
                                     "Age of the source's newest wal-stream heartbeat when the metrics were made",
                                     labels=["source"])
        counts = ws.catalog.failure_counts()
        lags: dict[str, float] = {}
        streams: dict[str, dict] = {}
        for row in rows:
            name = row["policy"]
            failures.add_metric([name], counts.get(name, 0))
            if row["rpo_seconds"]:
                rpo.add_metric([name], row["rpo_seconds"])
            if row["last_success_id"]:
                last = ws.catalog.backup(row["last_success_id"])
                finished = clock.parse_iso(last["finished_at"] or last["started_at"])
                success.add_metric([name], finished.timestamp())
                duration.add_metric([name], (finished - clock.parse_iso(last["started_at"])).total_seconds())
                stored.add_metric([name], last["bytes_stored"] or 0)
            window = row.get("restorable_window")
            if window and window.get("archive_lag_seconds") is not None:
                lags[row["source"]] = window["archive_lag_seconds"]
            if row.get("wal_stream"):
                streams[row["source"]] = row["wal_stream"]
        for source, seconds in sorted(lags.items()):
            lag.add_metric([source], seconds)
        for source, stream in sorted(streams.items()):
            streaming.add_metric([source], 1 if stream["running"] else 0)
            beat_at.add_metric([source], clock.parse_iso(stream["last_beat"]).timestamp())
            beat_age.add_metric([source], stream["age_seconds"])
        tick = GaugeMetricFamily("insite_scheduler_last_tick_timestamp_seconds",
                                 "The newest scheduler heartbeat in this catalog (Unix time); absent if none ever ran")
        beats = ws.catalog.scheduler_beats(limit=1)
        if beats:
            tick.add_metric([], clock.parse_iso(beats[0]["last_tick"]).timestamp())
        yield from (success, duration, stored, failures, rpo, lag, streaming, beat_at, beat_age, tick)
