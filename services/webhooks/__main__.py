"""Entry point: ``python -m services.webhooks`` (``--print-config`` lists its settings)."""

import sys

from services.webhooks.app import create_app
from services.webhooks.config import WebhooksConfig
from shared.infra.clients import require_redis_credentials
from shared.infra.logs import configure
from shared.infra.serve import run_http

if __name__ == "__main__":
    configure("webhooks")
    config = WebhooksConfig.load(sys.argv[1:])
    require_redis_credentials("webhooks", config.redis_url)
    run_http(create_app(config), config.host, config.port)
