"""Render the chart with the real, pinned helm binary and pick objects out of the result."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "clipserve"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "clip"
NAMESPACE = "ml"

Obj = dict[str, Any]


def install_tool(script: str) -> str:
    """Run one of scripts/install-*.sh (idempotent) and return the path it prints last."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / script)], check=True, capture_output=True, text=True
    ).stdout
    return out.strip().splitlines()[-1]


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


@dataclass(frozen=True)
class Helm:
    """The pinned helm binary, run against charts/clipserve."""

    binary: str

    def run(self, *args: str) -> str:
        proc = subprocess.run([self.binary, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise HelmError(proc.stderr.strip() or proc.stdout.strip())
        return proc.stdout

    def template_text(
        self,
        values: dict[str, Any] | None = None,
        values_files: Iterable[Path] = (),
        release: str = RELEASE,
        namespace: str = NAMESPACE,
    ) -> str:
        """`helm template` output; `values` goes in as a values file (types survive)."""
        args = ["template", release, str(CHART), "--namespace", namespace]
        for path in values_files:
            args += ["-f", str(path)]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
            if values:
                yaml.safe_dump(values, fh)
                fh.flush()
                args += ["-f", fh.name]
            return self.run(*args)

    def notes(
        self,
        values: dict[str, Any] | None = None,
        release: str = RELEASE,
        namespace: str = NAMESPACE,
    ) -> str:
        """NOTES.txt as rendered for an install.

        helm 3.17's `install --dry-run=client` still wants a cluster, and `helm template` skips
        NOTES.txt; so a copy of the chart carries NOTES.txt as a named template inside a
        ConfigMap, and the ConfigMap's data is the rendered text.
        """
        with tempfile.TemporaryDirectory() as tmp:
            chart = Path(tmp) / "clipserve"
            shutil.copytree(CHART, chart)
            notes = (chart / "templates" / "NOTES.txt").read_text()
            (chart / "templates" / "NOTES.txt").unlink()
            (chart / "templates" / "_notes.tpl").write_text(
                '{{- define "test.notes" -}}\n' + notes + "{{- end -}}\n"
            )
            (chart / "templates" / "notes-configmap.yaml").write_text(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
                'data:\n  notes: {{ include "test.notes" . | toJson }}\n'
            )
            args = [
                "template",
                release,
                str(chart),
                "--namespace",
                namespace,
                "--show-only",
                "templates/notes-configmap.yaml",
            ]
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
                yaml.safe_dump(values or {}, fh)
                fh.flush()
                out = self.run(*args, "-f", fh.name)
        return yaml.safe_load(out)["data"]["notes"]

    def template(
        self, values: dict[str, Any] | None = None, values_files: Iterable[Path] = (), **kw: Any
    ) -> list[Obj]:
        """Rendered objects, in helm's order."""
        text = self.template_text(values, values_files, **kw)
        return [doc for doc in yaml.safe_load_all(text) if doc]


def only(objs: list[Obj], kind: str) -> Obj:
    """The single object of `kind`; fails when there are none or several."""
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def kinds(objs: list[Obj]) -> set[str]:
    """The kinds present."""
    return {o["kind"] for o in objs}


def container(objs: list[Obj]) -> Obj:
    """The clipserve container of the single Deployment."""
    return only(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def pod_spec(objs: list[Obj]) -> Obj:
    """The pod spec of the single Deployment."""
    return only(objs, "Deployment")["spec"]["template"]["spec"]


def env(objs: list[Obj]) -> dict[str, Any]:
    """The container's env as name -> value (or valueFrom)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objs)["env"]}


def validate_custom_resources(validator: str, objs: list[Obj]) -> list[Obj]:
    """Run the CRD-derived validators (node) over `objs`; returns one result per object."""
    proc = subprocess.run(
        ["node", validator], input=json.dumps(objs), capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)
