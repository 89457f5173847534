"""Entry point: ``python -m services.dispatch`` (``--print-config`` lists its settings)."""

import sys

from services.dispatch.app import create_app
from services.dispatch.config import DispatchConfig
from shared.clients import require_redis_credentials
from shared.logs import configure
from shared.serve import run_http

if __name__ == "__main__":
    configure("dispatch")
    config = DispatchConfig.load(sys.argv[1:])
    require_redis_credentials("dispatch", config.redis_url)
    run_http(create_app(config), config.host, config.port)
