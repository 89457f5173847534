"""A websockets connection that hands each whole text frame to a callback as it is parsed off the socket.

websockets queues every frame for a task that awaits ``recv``: a future, a queue and a wake-up of that task per frame.
``TextTaker.take_text``, once set, sees each whole text frame first, inside the protocol's ``data_received``, and may
take it there (return True); a frame it declines, and every frame while it is None, goes the usual way. The push node
takes its browsers' acks this way (``services.push.connection``), and the load generator its sockets' deliveries
(``loadtest.fanout``), where a reading task per socket cost most of a broadcast's time to its last socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event


class TextTaker(Connection):
    # A slot, not an instance attribute: websockets' connection already has ~28, and one more set after its __init__
    # turned a push node's connection ``__dict__`` from a shared-key one into a table of its own (+1.5 KB a socket).
    __slots__ = ("take_text",)
    take_text: Callable[[bytes], bool] | None  # True: the frame was taken

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.take_text = None

    def process_event(self, event: Event) -> None:
        if (self.take_text is not None and isinstance(event, Frame) and event.opcode is Opcode.TEXT and event.fin
                and self.take_text(bytes(event.data))):
            return
        super().process_event(event)
