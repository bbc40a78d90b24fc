"""The READMEs' tables: the chart's values, from the `# --` comments in its values.yaml, and the
service's and the operator's settings, from the declarations their own --help also reads."""

from __future__ import annotations

import json
import re
from typing import Any

import clipserve.settings
import clipserve.tracing_config
import clipserve_operator.settings
import yaml

from .artefact import ROOT, Artefact

VALUES = "charts/clipserve/values.yaml"
KEY = re.compile(r"^(\s*)([A-Za-z]\w*):(\s|$)")


def documented_values(text: str) -> list[tuple[str, str, str | None]]:
    """(dotted key, description, @default override) for every `# --` documented key, in order."""
    rows: list[tuple[str, str, str | None]] = []
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped.removeprefix("# --").strip()]
            continue
        if stripped.startswith("#") and comment:
            comment.append(stripped.lstrip("#").strip())
            continue
        key = KEY.match(line)
        if key:
            indent = len(key.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key.group(2)))
            if comment:
                default = next(
                    (
                        c.removeprefix("@default --").strip()
                        for c in comment
                        if c.startswith("@default --")
                    ),
                    None,
                )
                desc = " ".join(c for c in comment if not c.startswith("@default --"))
                rows.append((".".join(k for _, k in stack), desc, default))
        comment = []
    return rows


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


def values_table() -> str:
    """The markdown table of every documented value."""
    text = (ROOT / VALUES).read_text(encoding="utf-8")
    values = yaml.safe_load(text)
    lines = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for key, desc, default in documented_values(text):
        value = lookup(values, key)
        kind = {
            dict: "object",
            list: "list",
            str: "string",
            bool: "bool",
            int: "int",
            float: "float",
            type(None): "null",
        }[type(value)]
        shown = default if default is not None else json.dumps(value, separators=(",", ":"))
        cell = desc.replace("|", "\\|")
        lines.append(f"| `{key}` | {kind} | `{shown}` | {cell} |")
    return "\n".join(lines)


SERVICE_SETTINGS = Artefact(
    "README.md",
    "service/clipserve/settings.py",
    clipserve.settings.markdown_table,
    region="settings-table",
)
TRACING_VARIABLES = Artefact(
    "README.md",
    "service/clipserve/tracing_config.py",
    clipserve.tracing_config.markdown_table,
    region="tracing-table",
)
OPERATOR_SETTINGS = Artefact(
    "README.md",
    "operator/clipserve_operator/settings.py",
    clipserve_operator.settings.markdown_table,
    region="operator-settings-table",
)
CHART_VALUES = Artefact(
    "charts/clipserve/README.md",
    f"the `# --` comments in {VALUES}",
    values_table,
    region="values",
)
ARTEFACTS = [SERVICE_SETTINGS, TRACING_VARIABLES, OPERATOR_SETTINGS, CHART_VALUES]
