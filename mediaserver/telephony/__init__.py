"""Phone calls through carrier media streams (Twilio Media Streams, Exotel voicebot).

Pure codecs (no I/O): `g711`, `resample`, `twilio`, `exotel`, `wire`, `events`, `stream_order`,
`playout`. The websocket and HTTP edge builds on them (see docs/telephony.md).
"""
