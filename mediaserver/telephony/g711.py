"""G.711 mu-law and A-law <-> 16-bit linear PCM, vectorised with lookup tables.

The quantisation follows ITU-T G.711 (11/88) Tables 1a/2a as implemented by the ITU's own
reference software, ITU-T G.191 STL `g711.c` (`ulaw_compress`, `alaw_compress`, `*_expand`):

* mu-law works on the 14 most significant bits, A-law on the 13 most significant bits.
* A negative sample's magnitude is its one's complement (`~x`), so `x` and `-1 - x` give mirror
  codes and 0 / -1 encode as the two "zeros" of each law: mu-law 0xFF / 0x7F, A-law 0xD5 / 0x55.
* mu-law characters are sent with every bit inverted, A-law with the even bits inverted (0x55).

Decoding yields the middle of each quantisation interval, scaled back to 16 bits (mu-law
0x00 -> -32124, A-law 0xAA -> 32256). Encoding is one 64 KiB table lookup per sample, decoding
two `bytes.translate`s, so a 20 ms frame costs a few microseconds. Values in, values out: no I/O.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Pcm16 = npt.NDArray[np.int16]
Codes = npt.NDArray[np.uint8]

ULAW_SILENCE = 0xFF  # encodes 0 (0x7F encodes -1 and decodes to 0 too)
ALAW_SILENCE = 0xD5  # encodes 0 (decodes to +8: A-law has no exact zero)


def _all_samples() -> npt.NDArray[np.int32]:
    """Every int16 value, indexed by its unsigned 16-bit pattern (so `view(uint16)` indexes)."""
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _ulaw_encode_table() -> Codes:
    x = _all_samples()
    magnitude = np.where(x < 0, ~x, x) >> 2  # 14-bit, one's complement for negatives
    biased = np.minimum(magnitude + 33, 0x1FFF)  # 33 = the mu-law bias in 14-bit units
    segment = np.zeros_like(biased)  # 1 + position of the highest set bit of biased >> 6
    rest = biased >> 6
    while np.any(rest):
        segment += rest > 0
        rest >>= 1
    segment += 1
    step_index = (biased >> segment) & 0x0F
    code = ((8 - segment) << 4) | (0x0F - step_index)
    code |= np.where(x >= 0, 0x80, 0)
    table: Codes = code.astype(np.uint8)
    return table


def _ulaw_decode_table() -> Pcm16:
    code = np.arange(256, dtype=np.int32)
    sign = np.where(code < 0x80, -1, 1)
    inverted = ~code
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    step = 4 << (exponent + 1)
    value = (0x80 << exponent) + step * mantissa + step // 2 - 4 * 33
    table: Pcm16 = (sign * value).astype(np.int16)
    return table


def _alaw_encode_table() -> Codes:
    x = _all_samples()
    magnitude = np.where(x < 0, ~x, x) >> 4  # 12 bits + sign = the 13-bit A-law input
    exponent = np.zeros_like(magnitude)
    shifted = magnitude.copy()
    big = shifted > 15
    exponent[big] = 1
    while True:
        wider = big & (shifted > 16 + 15)
        if not np.any(wider):
            break
        shifted[wider] >>= 1
        exponent[wider] += 1
    code = np.where(big, (shifted - 16) + (exponent << 4), magnitude)
    code |= np.where(x >= 0, 0x80, 0)
    return (code ^ 0x55).astype(np.uint8)


def _alaw_decode_table() -> Pcm16:
    code = np.arange(256, dtype=np.int32)
    bits = (code ^ 0x55) & 0x7F
    exponent = bits >> 4
    mantissa = bits & 0x0F
    mantissa = np.where(exponent > 0, mantissa + 16, mantissa)
    value = (mantissa << 4) + 8
    value = np.where(exponent > 1, value << np.maximum(exponent - 1, 0), value)
    return np.where(code > 127, value, -value).astype(np.int16)


def _byte_tables(decoded: Pcm16) -> tuple[bytes, bytes]:
    """`bytes.translate` tables giving the low and the high byte of each code's sample."""
    little = decoded.astype("<i2").view(np.uint8)
    return little[0::2].tobytes(), little[1::2].tobytes()


_ULAW_ENCODE = _ulaw_encode_table()
_ULAW_DECODE = _ulaw_decode_table()
_ALAW_ENCODE = _alaw_encode_table()
_ALAW_DECODE = _alaw_decode_table()
for _table in (_ULAW_ENCODE, _ULAW_DECODE, _ALAW_ENCODE, _ALAW_DECODE):
    _table.flags.writeable = False
_ULAW_BYTES = _byte_tables(_ULAW_DECODE)
_ALAW_BYTES = _byte_tables(_ALAW_DECODE)


def _as_pcm16(pcm: bytes | Pcm16) -> Pcm16:
    if isinstance(pcm, bytes | bytearray | memoryview):
        if len(pcm) % 2:
            raise ValueError(f"PCM16 needs an even number of bytes, got {len(pcm)}")
        return np.frombuffer(pcm, dtype="<i2").astype(np.int16, copy=False)
    if pcm.dtype != np.int16:
        raise TypeError(f"PCM16 samples must be int16, got {pcm.dtype}")
    return pcm


def ulaw_encode(pcm: bytes | Pcm16) -> bytes:
    """16-bit little-endian PCM (bytes or int16 samples) -> one mu-law byte per sample."""
    return _ULAW_ENCODE[_as_pcm16(pcm).view(np.uint16)].tobytes()


def _decode(codes: bytes | bytearray | memoryview, tables: tuple[bytes, bytes]) -> Pcm16:
    if isinstance(codes, memoryview):
        codes = codes.tobytes()
    # `bytes.translate` and strided copies keep the GIL; numpy's fancy indexing gives it up and
    # waits to get it back, which costs more than the lookup when the actor threads are busy.
    out = np.empty(2 * len(codes), dtype=np.uint8)
    out[0::2] = np.frombuffer(codes.translate(tables[0]), dtype=np.uint8)
    out[1::2] = np.frombuffer(codes.translate(tables[1]), dtype=np.uint8)
    return out.view("<i2").astype(np.int16, copy=False)


def ulaw_decode(codes: bytes | bytearray | memoryview) -> Pcm16:
    """mu-law bytes -> int16 samples (every byte is a valid code)."""
    return _decode(codes, _ULAW_BYTES)


def alaw_encode(pcm: bytes | Pcm16) -> bytes:
    """16-bit little-endian PCM (bytes or int16 samples) -> one A-law byte per sample."""
    return _ALAW_ENCODE[_as_pcm16(pcm).view(np.uint16)].tobytes()


def alaw_decode(codes: bytes | bytearray | memoryview) -> Pcm16:
    """A-law bytes -> int16 samples (every byte is a valid code)."""
    return _decode(codes, _ALAW_BYTES)
