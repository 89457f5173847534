"""Entry point: ``python -m services.push``."""

import uvloop

from services.push.config import PushConfig
from services.push.server import PushNode
from shared.logs import configure

if __name__ == "__main__":
    configure("push")
    uvloop.run(PushNode(PushConfig.from_env()).run())
