"""`python -m scripts.generate [--check]`: rewrite every generated file, or (--check) write
nothing and exit 1 naming each stale one. Run from the repository root (make does)."""

from __future__ import annotations

import argparse
import sys

from . import ARTEFACTS, stale, write


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.generate", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any file is stale"
    )
    check = parser.parse_args().check
    try:
        return run(check)
    except (RuntimeError, ValueError) as error:  # helm failed, or a README lost its markers
        print(f"generate: {error}", file=sys.stderr)
        return 2


def run(check: bool) -> int:
    if check:
        problems = stale(ARTEFACTS)
        for problem in problems:
            print(f"verify-generated: {problem}", file=sys.stderr)
        if problems:  # the last line, as each diff may push the names out of sight
            print(
                f"verify-generated: {len(problems)} stale (named above): run `make generate`",
                file=sys.stderr,
            )
            return 1
        return 0
    for name in write(ARTEFACTS):
        print(f"generate: rewrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
