"""Entry point: ``python -m services.push`` (``--print-config`` lists its settings)."""

import sys

import uvloop

from services.push.config import PushConfig
from services.push.server import PushNode
from shared.infra import tracing
from shared.infra.clients import require_redis_credentials
from shared.infra.logs import configure
from shared.infra.serve import pace_collector

if __name__ == "__main__":
    configure("push")
    tracing.configure("push")
    config = PushConfig.load(sys.argv[1:])
    require_redis_credentials("push", config.redis_url)
    node = PushNode(config)
    pace_collector()
    uvloop.run(node.run())
    tracing.shutdown()
