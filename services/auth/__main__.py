"""Entry point: ``python -m services.auth`` (``--print-config`` lists its settings)."""

import sys

from services.auth.app import create_app
from services.auth.config import AuthConfig
from shared.infra.logs import configure
from shared.infra.serve import run_http

if __name__ == "__main__":
    configure("auth")
    config = AuthConfig.load(sys.argv[1:])
    run_http(create_app(config), config.host, config.port)
