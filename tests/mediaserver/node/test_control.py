"""The control channel: its codec, descriptors passed with messages, calls, and closing."""

import asyncio
import os
import socket

import pytest

from mediaserver.node.control import (
    MAX_MESSAGE_BYTES,
    ControlChannel,
    ControlClosed,
    ControlError,
    RemoteError,
    channel_pair,
    decode,
    encode,
)
from tests.timing import MS


def test_encode_and_decode_are_inverse_and_compact():
    message = {"t": "state", "calls": 3, "admitting": True, "lag": 1.5}
    data = encode(message)
    assert data == b'{"t":"state","calls":3,"admitting":true,"lag":1.5}'
    assert decode(data) == message


@pytest.mark.parametrize(
    "message",
    [{"calls": 1}, {"t": 5}, {"t": "x", "value": float("nan")}, {"t": "x", "v": object()}],
)
def test_encode_refuses_what_the_other_side_could_not_read(message):
    with pytest.raises(ControlError):
        encode(message)


def test_encode_refuses_a_message_longer_than_the_limit():
    with pytest.raises(ControlError, match="too long"):
        encode({"t": "x", "blob": "a" * MAX_MESSAGE_BYTES})


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[1, 2]", b'{"no": "type"}', b'{"t": 1}'])
def test_decode_refuses_what_is_not_a_typed_object(data):
    with pytest.raises(ControlError):
        decode(data)


class Side:
    """One end of a pair, recording what it received."""

    def __init__(self, sock, on_call=None):
        self.messages = []
        self.sockets = []
        self.closed = asyncio.Event()
        self.arrived = asyncio.Event()
        self.channel = ControlChannel(
            sock,
            on_message=self._received,
            on_call=on_call,
            on_closed=self.closed.set,
        )

    def _received(self, message, sockets):
        self.messages.append(message)
        self.sockets.extend(sockets)
        self.arrived.set()

    async def wait_for(self, count):
        async with asyncio.timeout(5000 * MS):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()


def pair(on_call=None):
    ours, theirs = channel_pair()
    return Side(ours), Side(theirs, on_call=on_call)


def test_a_socket_sent_with_a_message_arrives_with_it_and_still_works():
    async def main():
        node, worker = pair()
        left, right = socket.socketpair()
        node.channel.send({"t": "conn", "n": 1}, fds=[left.fileno()])
        left.close()  # the sender's copy may go at once
        await worker.wait_for(1)
        assert worker.messages == [{"t": "conn", "n": 1}]
        (received,) = worker.sockets
        received.sendall(b"hello")
        assert right.recv(5) == b"hello"
        received.close()
        right.close()
        node.channel.close()
        worker.channel.close()

    asyncio.run(main())


def test_messages_sent_faster_than_read_are_queued_in_order_with_their_sockets():
    async def main():
        node, worker = pair()
        ends = [socket.socketpair() for _ in range(50)]
        big = "x" * 60_000  # a few of these fill the socket buffer
        for number, (left, _) in enumerate(ends):
            node.channel.send({"t": "conn", "n": number, "pad": big}, fds=[left.fileno()])
            left.close()
        await worker.wait_for(50)
        assert [m["n"] for m in worker.messages] == list(range(50))
        for number, (received, (_, right)) in enumerate(zip(worker.sockets, ends, strict=True)):
            received.sendall(bytes([number]))
            assert right.recv(1) == bytes([number])
            received.close()
            right.close()
        node.channel.close()
        worker.channel.close()

    asyncio.run(main())


def test_a_call_gets_the_result_or_the_error_of_the_other_side():
    async def answer(op, args):
        if op == "add":
            return args["a"] + args["b"]
        raise ValueError(f"no such op {op}")

    async def main():
        node, worker = pair(on_call=answer)
        assert await node.channel.call("add", a=2, b=3) == 5
        with pytest.raises(RemoteError, match="no such op nope"):
            await node.channel.call("nope")
        assert worker.messages == []  # calls and replies are not messages
        node.channel.close()
        worker.channel.close()

    asyncio.run(main())


def test_a_call_to_a_side_that_takes_none_is_an_error():
    async def main():
        node, worker = pair()
        with pytest.raises(RemoteError, match="takes no calls"):
            await worker.channel.call("anything")
        node.channel.close()
        worker.channel.close()

    asyncio.run(main())


def test_a_call_without_an_answer_times_out():
    async def slow(op, args):
        await asyncio.sleep(10)

    async def main():
        node, worker = pair(on_call=slow)
        with pytest.raises(ControlError, match="no answer"):
            await node.channel.call("wait", timeout_s=50 * MS)
        node.channel.close()
        worker.channel.close()

    asyncio.run(main())


def test_when_the_other_side_closes_waiting_calls_fail_and_the_close_is_reported():
    async def never(op, args):
        await asyncio.Event().wait()

    async def main():
        node, worker = pair(on_call=never)
        waiting = asyncio.ensure_future(node.channel.call("wait"))
        await asyncio.sleep(20 * MS)
        worker.channel.close()
        with pytest.raises(ControlClosed):
            await waiting
        async with asyncio.timeout(5000 * MS):
            await node.closed.wait()
        with pytest.raises(ControlClosed):
            node.channel.send({"t": "late"})

    asyncio.run(main())


def test_a_process_that_dies_closes_its_end():
    async def main():
        ours, theirs = channel_pair()
        node = Side(ours)
        pid = os.fork()
        if pid == 0:  # the child holds the other end and dies without a word
            os._exit(0)
        theirs.close()
        os.waitpid(pid, 0)
        async with asyncio.timeout(5000 * MS):
            await node.closed.wait()

    asyncio.run(main())


def test_unreadable_messages_are_dropped_and_the_channel_keeps_working():
    async def main():
        ours, theirs = channel_pair()
        node = Side(ours)
        theirs.send(b"not json")
        theirs.send(b'{"t": "fine"}')
        await node.wait_for(1)
        assert node.messages == [{"t": "fine"}]
        theirs.close()
        node.channel.close()

    asyncio.run(main())
