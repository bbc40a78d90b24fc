"""`python -m clipserve_operator`: the same as the `clipserve-operator` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
