"""The README's walkthrough starts its own real node with `make cluster`. It lives outside
tests/realnode, whose package-scoped fixtures hold the machine's one real node for the whole
package: inside it, `make cluster` waited for that node's lock until its timeout."""

from tests.realnode.conftest import measure

__all__ = ["measure"]
