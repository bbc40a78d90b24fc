"""Run schemathesis against a real server; meant to run inside `unshare -n` (see test_fuzz)."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.service.server import start_server

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)


def main() -> int:
    # Short fetch timeout: generated img_uri values must fail fast, never hang the run.
    srv = start_server("--fetch-timeout-s", "1", "--max-items", "64")
    try:
        # The test checks that schemathesis exercised every operation the schema declares.
        paths = httpx.get(f"{srv.url}/schema/openapi.json").json()["paths"]
        print(f"schema operations: {sum(len(ops) for ops in paths.values())}", flush=True)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{srv.url}/schema/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                sys.argv[1],
                "--workers",
                "2",
                "--generation-deterministic",
                "--request-timeout",
                "60",
            ],
            timeout=900,
        )
    finally:
        code = srv.stop()
    print(f"server exit code {code}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
