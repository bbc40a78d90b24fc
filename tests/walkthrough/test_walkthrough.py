"""The README's autoscaling walkthrough, run as written: each `<!-- walkthrough-autoscale: NAME -->`
block of the README is run by bash from the repository root, in the environment of the
`export` line `make cluster METRICS=1` prints, as a person pastes them. Blocks a person leaves
running in a terminal (the operator, the watches, the load) run in the background and end as
Ctrl-C ends them (SIGINT to their process group).

`make cluster` starts its own control plane and real node here (in a state dir of the test's,
so a cluster a person keeps in the default one is left alone), so this test takes none of the
cluster fixtures of tests/realnode (whose package holds the node: see conftest.py here).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.realnode.conftest import CHART_MARKS
from tests.support.cluster.harness import REPO
from tests.support.cluster.pipeline import STATE_FILE
from tests.support.cluster.processes import Proc, is_running
from tests.support.polling import eventually

pytestmark = CHART_MARKS  # the real node, by `make cluster`

BLOCK = re.compile(r"<!-- walkthrough-autoscale: ([\w-]+) -->\n```bash\n(.*?)```", re.DOTALL)
# Bounds on waits on a shared 2-core machine (the first `make cluster` builds for an hour); they
# measure nothing.
BUILD_S = 3600
WAIT_S = 600
NS, NAME = "demo", "clip-demo"
# Each poll costs a bash and a kubectl on a machine the pods under load share.
EVERY_S = 2.0


def readme_blocks() -> dict[str, str]:
    """The walkthrough's blocks by name, in the README's order."""
    blocks = dict(BLOCK.findall((REPO / "README.md").read_text()))
    assert list(blocks) == [
        "cluster", "operator", "service", "watch-hpa", "watch-clip", "load", "query", "down"
    ], list(blocks)  # fmt: skip
    return blocks


def _terminal_signals() -> None:
    """Ctrl-C as a terminal delivers it: a test run started in the background (`cmd &` in a
    script) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


MAKE_VARIABLES = frozenset(
    {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKE_TERMOUT", "MAKE_TERMERR"}
)


class Shell:
    """Runs blocks as a person does in a shell where the `export` line was pasted."""

    def __init__(self, state_dir: Path, logs: Path) -> None:
        # A person's terminal is not inside make: under `make test` the inherited MAKELEVEL and
        # MAKEFLAGS would make the README's `make cluster` print "Entering/Leaving directory".
        inherited = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES}
        self.env = {**inherited, "CLIPSERVE_CLUSTER_STATE": str(state_dir)}
        self.exports = ""
        self.logs = logs
        self.background: list[subprocess.Popen[bytes]] = []

    def _argv(self, block: str) -> list[str]:
        return ["bash", "-euo", "pipefail", "-c", f"{self.exports}\n{block}"]

    def run(self, block: str, timeout: float = WAIT_S) -> str:
        """Run a block to its end; its stdout (a failure shows both streams)."""
        done = subprocess.run(
            self._argv(block), cwd=REPO, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"{block}\nexited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
        return done.stdout

    def start(self, name: str, block: str) -> subprocess.Popen[bytes]:
        """Start a block left running in a terminal; stdout and stderr to logs/NAME.log."""
        with (self.logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                self._argv(block), cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_terminal_signals,
            )  # fmt: skip
        self.background.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def interrupt(self, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
        """Ctrl-C: SIGINT to the block's process group; its exit status."""
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def stop_all(self) -> None:
        for proc in self.background:
            self.interrupt(proc)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    """A Shell whose cluster state is the test's; whatever it started is stopped after."""
    sh = Shell(tmp_path / "cluster", tmp_path)
    try:
        yield sh
    finally:
        sh.stop_all()
        down = subprocess.run(
            ["make", "-s", "cluster-down"], cwd=REPO, env=sh.env, capture_output=True, text=True
        )
        print(down.stdout, down.stderr)


def kubectl_json(shell: Shell, *args: str) -> dict[str, Any]:
    return dict(json.loads(shell.run(f"kubectl {' '.join(args)} -o json")))


def watched(shell: Shell, watch: str, header: str, name: str) -> list[str]:
    """One column of a `kubectl get -w` block's output (a header, then a row per change), each
    change once."""
    lines = shell.log(watch).splitlines()
    if not lines:
        return []
    index = lines[0].split().index(header)
    values = [row.split()[index] for row in lines[1:] if row.startswith(name)]
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def until(what: str, probe: Callable[[], Any]) -> Any:
    return eventually(probe, what, WAIT_S, every_s=EVERY_S)


def clip_status(shell: Shell) -> dict[str, Any]:
    return dict(kubectl_json(shell, "get", "clip", NAME, "-n", NS)["status"])


def queue_depths(shell: Shell, query: str) -> dict[str, float]:
    """The README's Prometheus query, run as written: pod -> queue depth."""
    body = json.loads(shell.run(query))
    assert body["status"] == "success", body
    return {r["metric"]["pod"]: float(r["value"][1]) for r in body["data"]["result"]}


def test_the_readme_walkthrough_scales_out_under_load_and_back_after_it(
    shell: Shell, measure: Callable[[str, float], None]
) -> None:
    blocks = readme_blocks()
    t0 = time.monotonic()
    out = shell.run(blocks["cluster"], timeout=BUILD_S)
    measure("walkthrough: make cluster METRICS=1 (built, cached)", time.monotonic() - t0)
    lines = out.splitlines()
    assert lines[-1].startswith("export ") and " PROMETHEUS=http://" in lines[-1], lines[-3:]
    assert any(line.startswith("prometheus at http://") for line in lines), out
    shell.exports = lines[-1]
    prometheus = lines[-1].rsplit("PROMETHEUS=", 1)[1]
    recorded = json.loads((Path(shell.env["CLIPSERVE_CLUSTER_STATE"]) / STATE_FILE).read_text())
    prometheus_proc = Proc(**recorded["proc"])

    operator = shell.start("operator", blocks["operator"])
    t_apply = time.monotonic()
    shell.run(blocks["service"])
    t_ready = time.monotonic()
    watches = [shell.start(n, blocks[n]) for n in ("watch-hpa", "watch-clip")]
    load = shell.start("load", blocks["load"])
    until(
        "the ClipService at 2 ready pods under load",
        lambda: clip_status(shell).get("readyReplicas") == 2,
    )
    t_out = time.monotonic()
    # The README's query returns each pod's series, and the one under load has items waiting.
    pods = {p["metadata"]["name"] for p in kubectl_json(shell, "get", "pods", "-n", NS)["items"]}
    depths = until(
        "both pods' queue depths in Prometheus, items waiting in one",
        lambda: (
            (d := queue_depths(shell, blocks["query"]))
            and set(d) == pods
            and max(d.values()) > 0
            and d
        ),
    )
    assert len(depths) == 2, depths

    assert shell.interrupt(load) == 130, shell.log("load")
    assert "clipserve bench: interrupted; no results" in shell.log("load")
    assert "Traceback" not in shell.log("load"), shell.log("load")
    t_stop = time.monotonic()
    until(
        "the HPA back at 1 pod after its window",
        lambda: (
            (o := clip_status(shell))["replicas"] == 1 and o["autoscaler"]["currentReplicas"] == 1
        ),
    )
    t_in = time.monotonic()
    # What the person watching sees: the HPA's replicas 1 -> 2 -> 1, the ClipService's too (the
    # HPA's own row follows at its next sync).
    until(
        "the watches to show 1 pod",
        lambda: (
            watched(shell, "watch-hpa", "REPLICAS", f"{NAME}-blue")[-1:] == ["1"]
            and watched(shell, "watch-clip", "REPLICAS", NAME)[-1:] == ["1/1"]
        ),
    )
    for watch in watches:
        shell.interrupt(watch)
    hpa = watched(shell, "watch-hpa", "REPLICAS", f"{NAME}-blue")
    assert hpa[0] == hpa[-1] == "1" and "2" in hpa, hpa
    clip = watched(shell, "watch-clip", "REPLICAS", NAME)
    assert "2/2" in clip and clip[-1] == "1/1", clip

    shell.interrupt(operator)
    out = shell.run(blocks["down"])
    assert "prometheus stopped" in out and "real node stopped" in out, out
    assert not is_running(prometheus_proc)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{prometheus}/-/ready", timeout=2)
    measure("walkthrough: apply -> Ready", t_ready - t_apply)
    measure("walkthrough: load start -> 2 pods ready", t_out - t_ready)
    measure("walkthrough: load stopped -> back to 1 pod (30 s window)", t_in - t_stop)
