"""Property-based fuzzing of the OpenAPI schema with schemathesis: no 5xx, no schema violations.

The server and schemathesis run in a fresh network namespace with only loopback, so generated
`img_uri` values can never send traffic off this machine.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]


def _fuzz(driver_args: str, min_cases: int) -> str:
    """Run the fuzz driver in a network namespace of its own; its output once schemathesis
    tested every operation the served schema declares, `min_cases` or more, all passing."""
    assert shutil.which("unshare"), "util-linux unshare is needed to isolate the fuzzer"
    cmd = f"ip link set lo up && exec {sys.executable} -m tests.support.fuzz_driver {driver_args}"
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", cmd],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "server exit code 0" in out
    # schemathesis really exercised every operation the schema declares, with many cases
    declared = re.search(r"schema operations: (\d+)", out)
    assert declared and int(declared.group(1)) >= 7, out[-3000:]
    assert f"Tested: {declared.group(1)}" in out, out[-3000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert cases and int(cases.group(1)) >= min_cases, out[-3000:]
    assert cases.group(1) == cases.group(2), out[-3000:]
    return out


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_or_contract_violation():
    out = _fuzz("100", min_cases=300)
    # and got past validation where random bodies cannot (no template holds `{}`, no image
    # decodes): the schema's examples are served; test_fuzz_properties.py fuzzes past that
    served = re.findall(r'answered \w+\{endpoint="([^"]+)",status="200"\}', out)
    assert {"/classify", "/v1/embeddings"} <= set(served), served


@pytest.mark.slow
def test_schemathesis_through_the_gate_finds_no_error_of_its_own_and_no_open_door():
    # The same operations through `clipserve gate` (scale to zero) in front of the server, both
    # with one API key: with it, every answer must still be the server's and conform; without
    # it (schemathesis's ignored_auth), every operation must be refused.
    out = _fuzz("25 gate", min_cases=100)
    outcomes = re.search(r"gate outcomes: (\{.*\})", out)
    assert outcomes, out[-3000:]
    counts = ast.literal_eval(outcomes.group(1))
    # Requests went through, keyless ones were refused by the gate, and the gate itself never
    # failed one (a 502 or 504 of its own: a lost connection, a mangled request).
    assert counts["proxied"] > 0 and counts["unauthorized"] > 0, counts
    assert counts["error"] == 0, counts
