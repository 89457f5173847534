"""A websockets connection that hands each whole text frame to a callback as it is parsed off the socket.

websockets queues every frame for a task that awaits ``recv``: a future, a queue and a wake-up of that task per frame.
``TextTaker.take_text``, once set, sees each whole text frame first, inside the protocol's ``data_received``, and may
take it there (return True); a frame it declines, and every frame while it is None, goes the usual way. The push node
takes its browsers' acks this way (``services.push.connection``), and the load generator its sockets' deliveries
(``loadtest.fanout``), where a reading task per socket cost most of a broadcast's time to its last socket.
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.connection import Connection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event


class TextTaker(Connection):
    take_text: Callable[[bytes], bool] | None = None  # True: the frame was taken

    def process_event(self, event: Event) -> None:
        if (self.take_text is not None and isinstance(event, Frame) and event.opcode is Opcode.TEXT and event.fin
                and self.take_text(bytes(event.data))):
            return
        super().process_event(event)
