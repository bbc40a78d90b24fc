"""Settings precedence, the generated docs, and the CLI commands other than serve."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import httpx
import pytest
from clipserve import cli
from clipserve.settings import (
    Settings,
    available_cpus,
    env_name,
    flag_name,
    from_args,
)

from scripts import generate
from tests.support.pictures import png_bytes
from tests.support.server import MODEL_CONFIGS, TINY, Server, start_server


def _serve_args(*argv: str):
    return cli.build_parser().parse_args(["serve", *argv])


def test_flags_override_variables_which_override_defaults():
    env = {
        "CLIPSERVE_PORT": "4000",
        "CLIPSERVE_MAX_WAIT_MS": "2.5",
        "CLIPSERVE_MODEL": "A:x, B:y",
        "CLIPSERVE_FETCH_ALLOW": "10.0.0.0/8",
    }
    s = from_args(_serve_args("--port", "5000"), env)
    assert s.port == 5000 and s.max_wait_ms == 2.5
    assert s.model == ("A:x", "B:y") and s.fetch_allow == ("10.0.0.0/8",)
    assert s.host == Settings().host
    repeated = from_args(_serve_args("--model", "A:x", "--model", "B:y,C:z"), {})
    assert repeated.model == ("A:x", "B:y", "C:z")


def test_a_bad_value_is_refused_naming_the_setting():
    with pytest.raises(SystemExit, match="max_batch_size"):
        from_args(_serve_args(), {"CLIPSERVE_MAX_BATCH_SIZE": "lots"})


def test_help_documents_every_setting_with_its_variable():
    text = cli.build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    text = re.sub(r"\s+", " ", text)
    for f in fields(Settings):
        assert flag_name(f.name) in text and env_name(f.name) in text, f.name


def test_readme_configuration_table_matches_the_settings():
    problems = generate.stale([generate.tables.SERVICE_SETTINGS])
    assert not problems, "\n".join(problems)


def _clipserve(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "clipserve.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_encode_prints_a_text_or_image_embedding(tmp_path):
    img = tmp_path / "red.png"
    img.write_bytes(png_bytes())
    common = ["--model", TINY, "--model-config-dir", str(MODEL_CONFIGS)]
    text = _clipserve("encode", "a photo of a dog", *common)
    image = _clipserve("encode", "--image", str(img), *common)
    assert text.returncode == 0, text.stderr
    assert image.returncode == 0, image.stderr
    t, i = json.loads(text.stdout), json.loads(image.stdout)
    assert len(t) == len(i) == 32 and t != i


def test_encode_needs_exactly_one_input():
    r = _clipserve("encode", "text", "--image", "x.png")
    assert r.returncode == 2 and "one of them" in r.stderr


def test_device_prints_and_reports_what_serve_would_compute_on(tmp_path: Path):
    # The chart's `device` init container runs this; its file is the pod's termination message.
    report = tmp_path / "termination-log"
    r = _clipserve("device", "--report-to", str(report))
    assert r.returncode == 0, r.stderr
    device, dtype = r.stdout.splitlines()
    assert device == "cpu" and report.read_text() == "cpu"  # no GPU on this machine
    assert dtype.startswith("dtype: ") and "auto on cpu: this CPU" in dtype


def test_device_refuses_cuda_where_it_cannot_work_in_one_line():
    r = _clipserve("device", "--device", "cuda")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("clipserve: device") and "CUDA" in r.stderr


def test_models_lists_downloadable_specs():
    r = _clipserve("models")
    lines = r.stdout.split()
    assert r.returncode == 0 and "ViT-B-32:openai" in lines and "ViT-L-14:openai" in lines


def test_usable_cpus_honour_the_cgroup_quota(tmp_path: Path):
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("50000 100000\n")  # half a CPU: still one worker
    assert available_cpus(str(cpu_max)) == 1
    cpu_max.write_text("max 100000\n")
    assert available_cpus(str(cpu_max)) == affinity
    assert available_cpus(str(tmp_path / "absent")) == affinity


def _exits_or_turns_ready(srv: Server) -> int | None:
    """The exit code of a server that stops on its own, or None once it answers /readyz 200."""
    deadline = time.monotonic() + 300  # a guard against a hang, not a measurement
    while time.monotonic() < deadline:
        if (code := srv.proc.poll()) is not None:
            return code
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(srv.url + "/readyz", timeout=2).status_code == 200:
                return None
        time.sleep(0.1)
    raise AssertionError(f"neither exited nor turned ready:\n{srv.log()}")


@pytest.mark.parametrize("content", ["", " \n\t\n\n"], ids=["empty", "blank"])
def test_serve_refuses_to_start_on_an_api_key_file_that_holds_no_key(tmp_path: Path, content):
    """An empty Secret must not mean "no auth": the server would serve everyone."""
    keyfile = tmp_path / "api-keys"
    keyfile.write_text(content)
    srv = start_server("--api-key-file", str(keyfile), wait_ready=False)
    try:
        code = _exits_or_turns_ready(srv)
    finally:
        srv.stop()
    said = srv.log().strip().splitlines()[-1]
    assert code == 2, srv.log()
    assert said.startswith(f"clipserve: --api-key-file {keyfile} holds no API key"), said


def test_an_api_key_file_that_cannot_be_read_is_refused_naming_it(tmp_path: Path):
    missing = tmp_path / "absent"
    with pytest.raises(ValueError, match=f"--api-key-file {missing}: cannot read"):
        Settings(api_key_file=str(missing)).api_keys()
    keyfile = tmp_path / "keys"
    keyfile.write_text("\n k1 \n\nk2\n")
    assert Settings(api_key=("k0",), api_key_file=str(keyfile)).api_keys() == {"k0", "k1", "k2"}
