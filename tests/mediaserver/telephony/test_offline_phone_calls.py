"""Phone calls with the embedded engines: a spoken 8 kHz question is transcribed and answered.

The question is synthesized here by Piper and brought down to the telephone's 8 kHz; the scripted
Twilio sends it as mu-law (the scripted Exotel as 8 kHz PCM16) in real time, with silence before
and after, as a phone line would. Whisper hears it after our G.711 decoding and 8 -> 16 kHz
resampling; the agent's FAQ answers; espeak-ng voices the answer, which must come back as
outbound media of about the answer's length.
"""

from collections.abc import Iterator

import numpy as np
import pytest
from piper.config import SynthesisConfig

from config.settings import OfflineSettings
from mediaserver.engines.catalog import EngineCatalog
from mediaserver.store import AgentSpec, FaqRule
from mediaserver.telephony import g711, twilio
from mediaserver.telephony.resample import Resampler
from mediaserver.telephony.twilio_stream import route_token
from tests.mediaserver.telephony.harness import FakeExotel, FakeTwilio, running
from tests.timing import MS

QUESTION = "What are your opening hours?"
HOURS = "We are open from nine in the morning to six in the evening, Monday to Saturday."
TOKEN = "offline-test-token"
TIMEOUT = 30_000 * MS  # Whisper and synthesis on a busy 2-core box

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def catalog() -> Iterator[EngineCatalog]:
    engines = EngineCatalog(OfflineSettings())
    if engines.whisper is None:
        pytest.skip("the offline engines are not installed")
    engines.warm_up()
    yield engines
    engines.close()


@pytest.fixture(scope="module")
def question_8k(catalog) -> bytes:
    # Without Piper's random variation, which now and then makes Whisper hear "now" for "hours".
    voice = catalog.piper.load()
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(QUESTION, steady))
    resampler = Resampler(int(voice.config.sample_rate), 8000)
    samples = np.frombuffer(pcm, dtype=np.int16)
    return np.concatenate((resampler.process_array(samples), resampler.flush())).tobytes()


def words(text):
    return {w.strip(".,?!'\"").lower() for w in text.split()}


def bakery(server):
    company = server.demo_company()
    spec = AgentSpec(
        name="Bakery",
        voice="espeak",
        faq=(FaqRule(match=("opening hours", "open"), answer=HOURS),),
    )
    return company, server.run(lambda: server.store.create_agent(company.id, spec))


def test_twilio_caller_asks_and_hears_the_answer(tmp_path, catalog, question_8k):
    with running(tmp_path, catalog, twilio={"auth_token": TOKEN}) as server:
        company, agent = bakery(server)
        url = server.ws_url + "/twilio/stream"
        caller = FakeTwilio(url, headers={"X-Twilio-Signature": twilio.signature(TOKEN, url)})
        params = {"company_id": company.id, "agent_id": agent.id, "from": "+15550002222", "to": ""}
        params["token"] = route_token(TOKEN, caller.call_sid, params)
        caller.start(params)
        caller.stream()
        call = server.wait_for_call(lambda c: c.transport == "twilio")
        caller.speak(bytes(8000), wait=False)  # half a second of line noise first
        caller.speak(question_8k, silence_ms=300)
        user = server.wait_for_turn(call, lambda t: t.role == "user", TIMEOUT)
        assert {"opening", "hours"} <= words(user.text)
        answer = server.wait_for_turn(call, lambda t: t.role == "assistant", TIMEOUT)
        assert answer.text == HOURS and not answer.interrupted
        caller.stop()
        assert caller.wait_closed() == (1000, "Call ended")
        voiced = g711.ulaw_decode(bytes(caller.audio))
        loud = np.abs(voiced.astype(np.int32)) > 500
        assert loud.sum() / 8000 > 1.0  # seconds of audible answer
        assert len(voiced) / 8000 < 15


def test_exotel_caller_asks_and_hears_the_answer(tmp_path, catalog, question_8k):
    with running(tmp_path, catalog) as server:
        _, agent = bakery(server)
        caller = FakeExotel(server.ws_url + "/exotel/stream")
        caller.start(custom_parameters={"agent_id": agent.id})
        caller.stream()
        call = server.wait_for_call(lambda c: c.transport == "exotel")
        caller.speak(bytes(8000) + question_8k, silence_ms=400)
        user = server.wait_for_turn(call, lambda t: t.role == "user", TIMEOUT)
        assert {"opening", "hours"} <= words(user.text)
        answer = server.wait_for_turn(call, lambda t: t.role == "assistant", TIMEOUT)
        assert answer.text == HOURS
        caller.stop()
        assert caller.wait_closed() == (1000, "Call ended")
        assert all(size % 320 == 0 and size >= 3200 for size in caller.media_sizes)
        voiced = np.frombuffer(bytes(caller.audio), dtype="<i2")
        assert (np.abs(voiced.astype(np.int32)) > 500).sum() / 8000 > 1.0
