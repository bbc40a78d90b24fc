"""What importing a module pulls in, measured in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path


def modules_loaded_by(
    module: str,
    watched: Iterable[str],
    path_first: Path | None = None,
    *,
    then: str = "",
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Which of `watched` a fresh `import module` loads (and then the code `then`, which sees
    the module as `m`, under `env` if given); with `path_first`, the module must come from there
    (an unpacked wheel ahead of this checkout's editable install)."""
    code = (
        "import importlib, json, sys\n"
        + (f"sys.path.insert(0, {str(path_first)!r})\n" if path_first else "")
        + f"m = importlib.import_module({module!r})\n"
        + then
        + "\nprint(m.__file__)\n"
        + f"print(json.dumps(sorted(set({sorted(watched)!r}) & set(sys.modules))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=None if env is None else dict(env),
    ).stdout.splitlines()
    if path_first:
        assert out[0].startswith(str(path_first)), out[0]
    return json.loads(out[1])
