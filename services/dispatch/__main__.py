"""Entry point: ``python -m services.dispatch`` (``--print-config`` lists its settings)."""

import sys

from services.dispatch.app import create_app
from services.dispatch.config import DispatchConfig
from shared.infra import tracing
from shared.infra.clients import require_redis_credentials
from shared.infra.logs import configure
from shared.infra.serve import run_http

if __name__ == "__main__":
    configure("dispatch")
    tracing.configure("dispatch")
    config = DispatchConfig.load(sys.argv[1:])
    require_redis_credentials("dispatch", config.redis_url)
    run_http(create_app(config), config.host, config.port)
