"""Run schemathesis against a real server, or a real gate in front of one (`gate` as the second
argument); meant to run inside `unshare -n` (see test_fuzz)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import httpx
from clipserve.gate import OWN_PATHS

from tests.support.gate import GateProcess
from tests.support.server import start_server

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)
GATE_KEY = "fuzz-key"


def schemathesis(
    url: str,
    examples: str,
    *extra: str,
    exclude: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> int:
    """schemathesis over every operation of the schema at `url`/schema/openapi.json but those
    of the `exclude` paths."""
    # The test checks that schemathesis exercised every operation it was given.
    paths = httpx.get(f"{url}/schema/openapi.json").json()["paths"]
    count = sum(len(ops) for path, ops in paths.items() if path not in exclude)
    print(f"schema operations: {count}", flush=True)
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/schema/openapi.json"]
    cmd += ["--max-examples", examples, "--workers", "2", "--generation-deterministic"]
    cmd += ["--request-timeout", "60", *extra]
    for path in exclude:
        cmd += ["--exclude-path", path]
    return subprocess.run(cmd, timeout=900, env={**os.environ, **(env or {})}).returncode


def main() -> int:
    # Short fetch timeout: generated img_uri values must fail fast, never hang the run.
    srv = start_server("--fetch-timeout-s", "1", "--max-items", "64")
    try:
        code = schemathesis(srv.url, sys.argv[1], "--checks", CHECKS)
        # What each route answered: schemathesis's counts do not tell a 200 from a 400.
        for line in httpx.get(f"{srv.url}/metrics").text.splitlines():
            if line.startswith("clipserve_requests_total{"):
                print(f"answered {line}", flush=True)
    finally:
        server_code = srv.stop()
    print(f"server exit code {server_code}")
    return code


def main_gate() -> int:
    """Through a keyed gate to a keyed server: with the key, what the server alone answers to
    the same request (fuzz_gate_hooks: the raw path, body and query passed on, no 502/504 of
    the gate's own); without it, 401 for every operation (schemathesis's ignored_auth)."""
    with tempfile.NamedTemporaryFile("w", suffix=".keys") as keys:
        keys.write(GATE_KEY + "\n")
        keys.flush()
        env = {"CLIPSERVE_API_KEY_FILE": keys.name}
        srv = start_server("--fetch-timeout-s", "1", "--max-items", "64", env=env)
        gate = GateProcess(srv.url, env=env)
        try:
            code = schemathesis(
                gate.url,
                sys.argv[1],
                "--checks",
                f"{CHECKS},ignored_auth,same_answer_as_the_server",
                "--header",
                f"Authorization: Bearer {GATE_KEY}",
                # The gate's own health and metrics, never passed on (and open, as the server's).
                exclude=OWN_PATHS,
                env={
                    "SCHEMATHESIS_HOOKS": "tests.support.fuzz_gate_hooks",
                    "CLIPSERVE_FUZZ_DIRECT": srv.url,
                },
            )
            print(f"gate outcomes: {gate.requests()}", flush=True)
        finally:
            gate.stop()
            server_code = srv.stop()
    print(f"server exit code {server_code}")
    return code


if __name__ == "__main__":
    sys.exit(main_gate() if sys.argv[2:] == ["gate"] else main())
