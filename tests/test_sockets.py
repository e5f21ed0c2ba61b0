"""streamer.io.sockets: a sender whose side-car is gone gives up with a clear error."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from streamer.io.protocol import FrameMessage
from streamer.io.sockets import FrameSender, SenderConfig, SendTimeout, bind


def frame(seq: int) -> FrameMessage:
    return FrameMessage(stream="s", seq=seq, t_acq_ns=seq, modality="US",
                        pixels=np.zeros((8, 8), np.uint8), spacing_mm=(0.3, 0.3), fps=50.0)


def test_a_sender_whose_side_car_is_gone_raises_send_timeout_instead_of_blocking():
    """Issue 14: replay blocked for ever once the side-car was gone. The peer accepts the
    connection, then closes: the sender queues up to its high-water mark, then gives up
    after the send timeout, saying how many messages may be lost."""
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    endpoint = bind(pull, "tcp://127.0.0.1:*")
    config = SenderConfig(endpoint, send_hwm=5, send_timeout_s=0.3, linger_s=5.0)
    sender = FrameSender(config, context)
    try:
        sender.send(frame(0))
        assert pull.recv_multipart()  # delivered while the side-car was there
        pull.close(linger=0)
        t0 = time.monotonic()
        with pytest.raises(SendTimeout, match=r"took no message for 0.3 s .* up to 5 "):
            for seq in range(1, 1000):
                sender.send(frame(seq))
        assert time.monotonic() - t0 < 10.0
        assert 1 <= sender.sent < 1000
    finally:
        t0 = time.monotonic()
        sender.close()  # nothing left to wait for: the queued messages are given up
        context.term()
        assert time.monotonic() - t0 < 2.0


def test_a_non_blocking_send_still_raises_again():
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    endpoint = bind(pull, "tcp://127.0.0.1:*")
    sender = FrameSender(SenderConfig(endpoint, send_hwm=1, send_timeout_s=0.2), context)
    pull.close(linger=0)
    with pytest.raises(zmq.Again):
        for seq in range(1000):
            sender.send(frame(seq), block=False)
    sender.socket.setsockopt(zmq.LINGER, 0)
    sender.close()
    context.term()
