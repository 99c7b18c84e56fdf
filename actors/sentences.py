"""Reply text in, whole sentences out, as soon as each one ends (pure).

Text-to-speech gets each sentence the moment it is complete, so first audio never waits for
the whole reply. `SpokenText` answers the barge-in question: given how many milliseconds of a
reply's audio were played, which text did the caller hear?
"""

from __future__ import annotations

import re

# A sentence ends at . ! ? (or a newline) followed by whitespace; "3.5" and "e.g.x" do not split.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")


class SentenceSplitter:
    def __init__(self) -> None:
        self._text = ""

    def feed(self, text: str) -> list[str]:
        """Add reply text; return the sentences it completed."""
        self._text += text
        sentences: list[str] = []
        while True:
            match = _BOUNDARY.search(self._text)
            if match is None:
                return sentences
            sentence = self._text[: match.end()].strip()
            self._text = self._text[match.end() :]
            if sentence:
                sentences.append(sentence)

    def flush(self) -> str:
        """The unfinished rest (end of reply), possibly empty."""
        rest, self._text = self._text.strip(), ""
        return rest


class SpokenText:
    """Sentences sent to TTS and the audio each produced, to find the text actually played."""

    def __init__(self) -> None:
        self.sentences: list[str] = []
        self.audio_ms: list[float] = []

    def sent(self, sentence: str) -> int:
        self.sentences.append(sentence)
        self.audio_ms.append(0.0)
        return len(self.sentences) - 1

    def voiced(self, index: int, ms: float) -> None:
        self.audio_ms[index] += ms

    def spoken(self, played_ms: float) -> str:
        """Whole sentences played, plus the played share of the words of the next one."""
        words: list[str] = []
        remaining = played_ms
        for sentence, ms in zip(self.sentences, self.audio_ms, strict=True):
            if ms <= 0:
                break
            if remaining >= ms:
                words.append(sentence)
                remaining -= ms
                continue
            parts = sentence.split()
            heard = int(len(parts) * remaining / ms)
            if heard:
                words.append(" ".join(parts[:heard]))
            break
        return " ".join(words)
