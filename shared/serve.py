"""Running a Starlette app on uvicorn with the project's logging and uvicorn's graceful shutdown."""

from __future__ import annotations

import uvicorn
from starlette.applications import Starlette


def run_http(app: Starlette, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM: uvicorn stops accepting, drains requests, then runs the lifespan exit."""
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", log_config=None, access_log=False, timeout_graceful_shutdown=10)
