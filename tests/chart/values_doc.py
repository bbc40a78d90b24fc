"""The chart README's values table, generated from the `# --` comments in values.yaml.

`python -m tests.chart.values_doc` rewrites the table in charts/clipserve/README.md;
tests/chart/test_values_schema.py checks that it is current.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import yaml

from tests.support.rendering import CHART

README = CHART / "README.md"
START, END = "<!-- values:start -->", "<!-- values:end -->"
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


def table() -> str:
    """The markdown table of every documented value."""
    text = (CHART / "values.yaml").read_text()
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


def current_table() -> str:
    """The table as it stands in the README."""
    text = README.read_text()
    return text[text.index(START) + len(START) : text.index(END)].strip()


def write() -> None:
    """Replace the README's table with a fresh one."""
    text = README.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(f"{head}{START}\n{table()}\n{END}{tail}")


if __name__ == "__main__":
    write()
    sys.stdout.write(f"wrote {README}\n")
