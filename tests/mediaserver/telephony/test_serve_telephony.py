"""`mediaserver serve` answers phone calls: the composition root wires the telephony endpoints."""

import signal
import urllib.parse
import urllib.request
from xml.etree import ElementTree

import pytest

from tests.mediaserver.serve_process import Server
from tests.mediaserver.telephony.harness import FakeExotel, FakeTwilio
from tests.timing import MS

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path):
    running = Server(tmp_path)
    yield running
    if running.process.poll() is None:
        running.stop(signal.SIGKILL)


def test_serve_answers_the_twilio_webhook_and_streams_the_greeting(server):
    form = urllib.parse.urlencode({"CallSid": "CA" + "4" * 32, "To": "+18005550100"}).encode()
    request = urllib.request.Request(server.url + "/twilio/voice", data=form, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        twiml = response.read().decode()
    stream = ElementTree.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None
    url = stream.get("url", "")
    assert url == server.url.replace("http://", "ws://") + "/twilio/stream"
    caller = FakeTwilio(url)
    caller.start({p.get("name", ""): p.get("value", "") for p in stream})
    caller.stream()
    caller.wait_for(lambda c: c.events.count("media") >= 10, 30_000 * MS)  # the demo greeting
    caller.stop()
    assert caller.wait_closed() == (1000, "Call ended")
    assert server.stop() == 0


def test_serve_answers_an_exotel_stream(server):
    caller = FakeExotel(server.url.replace("http://", "ws://") + "/exotel/stream")
    caller.start()
    caller.stream()
    caller.wait_for(lambda c: "media" in c.events, 30_000 * MS)
    caller.stop()
    assert caller.wait_closed() == (1000, "Call ended")
    assert server.stop() == 0
