"""Start-up and shutdown state: what /readyz reports and how SIGTERM drains the server."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clipserve.redact import redact

if TYPE_CHECKING:  # importing the engine pulls in torch: keep `clipserve --help` fast
    from clipserve.engine.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class Lifecycle:
    """Readiness inputs that are not the models' own: load failure and drain."""

    draining: bool = False
    load_error: str | None = None
    # Set by the CLI: asks the HTTP server to stop (after a failed load).
    request_exit: Callable[[], None] = field(default=lambda: None)

    def not_ready_reason(self, engine: Engine) -> str | None:
        """Why /readyz is 503, or None when ready."""
        if self.draining:
            return "shutting down"
        if self.load_error:
            return f"model load failed: {self.load_error}"
        if not engine.loaded:
            return "loading models"
        if why := engine.failure:
            return why
        return None

    def fail_start(self, message: str) -> None:
        """Record a fatal start-up error and stop the server."""
        message = redact(message)  # a download error quotes its URL; /readyz is open
        log.error("start-up failed: %s", message)
        self.load_error = message
        self.request_exit()
