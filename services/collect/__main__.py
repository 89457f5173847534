"""Entry point: ``python -m services.collect`` (``--print-config`` lists its settings)."""

import sys

from services.collect.app import create_app
from services.collect.config import CollectConfig
from shared.infra import tracing
from shared.infra.clients import require_redis_credentials
from shared.infra.logs import configure
from shared.infra.serve import run_http

if __name__ == "__main__":
    configure("collect")
    tracing.configure("collect")
    config = CollectConfig.load(sys.argv[1:])
    require_redis_credentials("collect", config.redis_url)
    run_http(create_app(config), config.host, config.port)
