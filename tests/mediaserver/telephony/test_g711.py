"""G.711 against a scalar reference written from the ITU-T G.711 tables, and known byte values.

The reference below is deliberately naive: it lists the decision values of Table 2a (mu-law,
14-bit magnitudes) and Table 1a (A-law, 13-bit magnitudes), finds a sample's interval with
`bisect`, and decodes an interval to its middle. A decision value belongs to the interval above
it, and a negative sample's magnitude is its one's complement, as in ITU-T G.191's `g711.c`.
"""

import bisect
import itertools
import warnings

import numpy as np
import pytest

from mediaserver.telephony import g711

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def decision_values(first, segments):
    """`first`: the decisions inside the first segment; `segments`: (end, step) of the rest."""
    values = list(first)
    start = values[-1]
    for end, step in segments:
        values.extend(range(start + step, end + 1, step))
        start = end
    return values


# Table 2a: 0-1 | 1, 3, ... 31 (step 2) | to 95 step 4 | to 223 step 8 | ... | to 8159 step 256.
ULAW_DECISIONS = decision_values(
    range(1, 32, 2),
    [(95, 4), (223, 8), (479, 16), (991, 32), (2015, 64), (4063, 128), (8159 - 256, 256)],
)
ULAW_TOP = 8159
# Table 1a: 0, 2, ... 32 and 32 ... 64 in steps of 2 | to 128 step 4 | ... | to 4096 step 128.
ALAW_DECISIONS = decision_values(
    range(2, 33, 2),
    [(64, 2), (128, 4), (256, 8), (512, 16), (1024, 32), (2048, 64), (4096 - 128, 128)],
)
ALAW_TOP = 4096


def middles(decisions, top):
    edges = [0, *decisions, top]
    return [(low + high) / 2 for low, high in itertools.pairwise(edges)]


ULAW_MIDDLES = middles(ULAW_DECISIONS, ULAW_TOP)
ULAW_MIDDLES[0] = 0  # Table 2a: the interval 0-1 decodes to 0
ALAW_MIDDLES = middles(ALAW_DECISIONS, ALAW_TOP)


def ulaw_reference(sample):
    magnitude = (~sample if sample < 0 else sample) >> 2
    interval = min(bisect.bisect_right(ULAW_DECISIONS, magnitude), 127)
    sign = 0x80 if sample >= 0 else 0
    return sign | (interval ^ 0x7F)  # mu-law: polarity 1 = positive, the 7 other bits inverted


def alaw_reference(sample):
    magnitude = (~sample if sample < 0 else sample) >> 3
    interval = min(bisect.bisect_right(ALAW_DECISIONS, magnitude), 127)
    sign = 0x80 if sample >= 0 else 0
    return (sign | interval) ^ 0x55  # A-law characters: even bits inverted


def ulaw_decode_reference(code):
    value = int(ULAW_MIDDLES[(code & 0x7F) ^ 0x7F] * 4)
    return value if code & 0x80 else -value


def alaw_decode_reference(code):
    bits = code ^ 0x55
    value = int(ALAW_MIDDLES[bits & 0x7F] * 8)
    return value if bits & 0x80 else -value


def test_the_reference_tables_have_128_intervals_each():
    assert len(ULAW_DECISIONS) == 127
    assert ULAW_DECISIONS[:3] == [1, 3, 5]
    assert ULAW_DECISIONS[14:18] == [29, 31, 35, 39]
    assert ULAW_DECISIONS[-1] == 7903
    assert len(ALAW_DECISIONS) == 127
    assert ALAW_DECISIONS[14:18] == [30, 32, 34, 36]
    assert ALAW_DECISIONS[-1] == 3968


def test_ulaw_encoding_matches_the_table_for_every_16_bit_sample():
    ours = np.frombuffer(g711.ulaw_encode(ALL_SAMPLES), dtype=np.uint8)
    expected = np.array([ulaw_reference(int(x)) for x in ALL_SAMPLES], dtype=np.uint8)
    assert np.array_equal(ours, expected)


def test_alaw_encoding_matches_the_table_for_every_16_bit_sample():
    ours = np.frombuffer(g711.alaw_encode(ALL_SAMPLES), dtype=np.uint8)
    expected = np.array([alaw_reference(int(x)) for x in ALL_SAMPLES], dtype=np.uint8)
    assert np.array_equal(ours, expected)


def test_decoding_gives_the_middle_of_each_interval():
    assert g711.ulaw_decode(ALL_CODES).tolist() == [ulaw_decode_reference(c) for c in ALL_CODES]
    assert g711.alaw_decode(ALL_CODES).tolist() == [alaw_decode_reference(c) for c in ALL_CODES]


@pytest.mark.parametrize(
    ("sample", "ulaw", "alaw"),
    [
        (0, 0xFF, 0xD5),  # the silence bytes of every telephony stack
        (-1, 0x7F, 0x55),  # the "negative zero"
        (32767, 0x80, 0xAA),
        (-32768, 0x00, 0x2A),
        (1000, 0xCE, 0xFA),
        (-1000, 0x4E, 0x7A),
    ],
)
def test_known_encodings(sample, ulaw, alaw):
    pcm = np.array([sample], dtype=np.int16)
    assert g711.ulaw_encode(pcm) == bytes([ulaw])
    assert g711.alaw_encode(pcm) == bytes([alaw])
    assert g711.ulaw_encode(pcm.tobytes()) == bytes([ulaw])
    assert g711.alaw_encode(pcm.tobytes()) == bytes([alaw])


@pytest.mark.parametrize(
    ("code", "ulaw_value", "alaw_value"),
    [
        (0xFF, 0, 848),
        (0x7F, 0, -848),
        (0x00, -32124, -5504),
        (0x80, 32124, 5504),
        (0xD5, 716, 8),
        (0x55, -716, -8),
        (0x2A, -5372, -32256),
        (0xAA, 5372, 32256),
    ],
)
def test_known_decodings(code, ulaw_value, alaw_value):
    assert int(g711.ulaw_decode(bytes([code]))[0]) == ulaw_value
    assert int(g711.alaw_decode(bytes([code]))[0]) == alaw_value


def test_every_code_survives_decode_then_encode():
    ulaw = np.frombuffer(g711.ulaw_encode(g711.ulaw_decode(ALL_CODES)), dtype=np.uint8)
    expected = np.arange(256, dtype=np.uint8)
    expected[0x7F] = 0xFF  # both mu-law zeros decode to 0, which encodes as 0xFF
    assert np.array_equal(ulaw, expected)
    alaw = np.frombuffer(g711.alaw_encode(g711.alaw_decode(ALL_CODES)), dtype=np.uint8)
    assert np.array_equal(alaw, np.arange(256, dtype=np.uint8))


def test_louder_samples_never_decode_quieter():
    for encode, decode in (
        (g711.ulaw_encode, g711.ulaw_decode),
        (g711.alaw_encode, g711.alaw_decode),
    ):
        decoded = decode(encode(ALL_SAMPLES)).astype(np.int32)
        assert np.all(np.diff(decoded) >= 0)


def test_quantisation_error_is_within_half_an_interval():
    for encode, decode, top in (
        (g711.ulaw_encode, g711.ulaw_decode, 4 * ULAW_TOP),
        (g711.alaw_encode, g711.alaw_decode, 8 * ALAW_TOP - 512),
    ):
        inside = ALL_SAMPLES[np.abs(ALL_SAMPLES.astype(np.int32)) < top]
        error = np.abs(decode(encode(inside)).astype(np.int32) - inside)
        # Half of a 4-bit mantissa step is 1/32 of the segment, at most 1/16 of the value.
        assert np.all(error <= np.maximum(np.abs(inside.astype(np.int32)) / 16, 16))


def test_agrees_with_audioop_where_audioop_follows_g711():
    audioop = pytest.importorskip("audioop")  # in the standard library until Python 3.13
    pcm = ALL_SAMPLES.tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert g711.alaw_encode(pcm) == audioop.lin2alaw(pcm, 2)
        assert g711.ulaw_decode(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)
        assert g711.alaw_decode(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)
        theirs = np.frombuffer(audioop.lin2ulaw(pcm, 2), dtype=np.uint8)
    # audioop takes a negative sample's magnitude as -x where G.191 takes ~x: the codes differ
    # by one interval, for negative samples at decision values only.
    ours = np.frombuffer(g711.ulaw_encode(pcm), dtype=np.uint8)
    positive = ALL_SAMPLES >= 0
    assert np.array_equal(ours[positive], theirs[positive])
    differ = np.flatnonzero(ours != theirs)
    assert len(differ) < 600
    assert np.all(np.abs(ours[differ].astype(int) - theirs[differ].astype(int)) == 1)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="even"):
        g711.ulaw_encode(b"\x00\x01\x02")
    with pytest.raises(TypeError, match="int16"):
        g711.alaw_encode(np.zeros(4, dtype=np.float32))
