"""Entry point: ``python -m services.push``."""

import uvloop

from services.push.config import PushConfig
from services.push.server import PushNode
from shared.clients import require_redis_credentials
from shared.logs import configure

if __name__ == "__main__":
    configure("push")
    config = PushConfig.from_env()
    require_redis_credentials("push", config.redis_url)
    uvloop.run(PushNode(config).run())
