"""What importing a module pulls in, measured in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path


def modules_loaded_by(
    module: str, watched: Iterable[str], path_first: Path | None = None
) -> list[str]:
    """Which of `watched` a fresh `import module` loads; with `path_first`, the module must
    come from there (an unpacked wheel ahead of this checkout's editable install)."""
    code = (
        "import importlib, json, sys\n"
        + (f"sys.path.insert(0, {str(path_first)!r})\n" if path_first else "")
        + f"m = importlib.import_module({module!r})\n"
        + "print(m.__file__)\n"
        + f"print(json.dumps(sorted(set({sorted(watched)!r}) & set(sys.modules))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    if path_first:
        assert out[0].startswith(str(path_first)), out[0]
    return json.loads(out[1])
