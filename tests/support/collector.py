"""A real OpenTelemetry Collector (scripts/build-otelcol.sh, built here if absent) receiving
OTLP/HTTP on a free loopback port and writing what it gets to a file (OTLP JSON, one line per
export), which `spans()` reads back.

    with Collector(tmp_path) as collector:
        env = collector.env()          # the OTEL_* variables a server exports to it with
        ...
        spans = collector.wait_for_spans(lambda s: len(s) >= 3)
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from clipserve.bench.server import free_port

from tests.support.polling import eventually

REPO = Path(__file__).resolve().parents[2]


def build() -> Path:
    """scripts/build-otelcol.sh (cached: instant once built; ~2 min cold); the binary."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts/build-otelcol.sh")], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/build-otelcol.sh failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Span:
    """One exported span, flattened from OTLP JSON (ids as the lower-case hex OTLP JSON uses)."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int  # OTLP's SpanKind: 1 internal, 2 server
    attributes: dict[str, Any]
    links: list[tuple[str, str]]  # (trace id, span id) of each link
    resource: dict[str, Any] = field(default_factory=dict)


def _value(v: dict[str, Any]) -> Any:
    """An OTLP JSON AnyValue as Python (int64s are strings in OTLP JSON)."""
    if "intValue" in v:
        return int(v["intValue"])
    return next(iter(v.values()), None)


def _attributes(kvs: list[dict[str, Any]]) -> dict[str, Any]:
    return {kv["key"]: _value(kv.get("value", {})) for kv in kvs}


def parse(lines: list[str]) -> list[Span]:
    """Every span in the file exporter's lines."""
    spans = []
    for line in filter(None, (ln.strip() for ln in lines)):
        for rs in json.loads(line).get("resourceSpans", []):
            resource = _attributes(rs.get("resource", {}).get("attributes", []))
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    spans.append(
                        Span(
                            name=s["name"],
                            trace_id=s["traceId"],
                            span_id=s["spanId"],
                            parent_id=s.get("parentSpanId", ""),
                            kind=int(s.get("kind", 0)),
                            attributes=_attributes(s.get("attributes", [])),
                            links=[(k["traceId"], k["spanId"]) for k in s.get("links", [])],
                            resource=resource,
                        )
                    )
    return spans


class Collector:
    """The collector process, its OTLP/HTTP endpoint and its output file."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.output = folder / "traces.jsonl"
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "collector.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def env(self, **extra: str) -> dict[str, str]:
        """What a server needs to export here: the endpoint, and exports every 100 ms."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            **extra,
        }

    def __enter__(self) -> Collector:
        binary = build()
        config = self.folder / "collector.yaml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "receivers": {
                        "otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{self.port}"}}}
                    },
                    "exporters": {"file": {"path": str(self.output), "flush_interval": "100ms"}},
                    "service": {
                        # no :8888 metrics listener, which concurrent collectors would share
                        "telemetry": {"metrics": {"level": "none"}},
                        "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
                    },
                }
            )
        )
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [str(binary), "--config", f"file:{config}"], stdout=log, stderr=subprocess.STDOUT
            )
        eventually(self._listening, "the collector's OTLP/HTTP receiver", 60, every_s=0.1)
        return self

    def _listening(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"the collector exited:\n{self.log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def log(self) -> str:
        """What the collector logged."""
        return self.log_path.read_text(errors="replace")

    def spans(self) -> list[Span]:
        """Every span written so far."""
        if not self.output.exists():
            return []
        # whole lines only: the last one may still be being written
        return parse(self.output.read_text().split("\n")[:-1])

    def wait_for_spans(self, enough: Callable[[list[Span]], bool], what: str) -> list[Span]:
        """The spans once `enough` says they are all in (the server exports every 100 ms)."""
        return eventually(lambda: (s := self.spans()) and enough(s) and s, what, 60, every_s=0.2)
