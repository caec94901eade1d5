"""Near-duplicate detection for short texts (task seeds).

Seeds are one-line abstracts, so a bag-of-words measure is the right tool:
"Resolving gcc -l library not found errors" and "Fix gcc library not found
(-l) errors" share almost every content word while differing in order and
filler. Similarity is the Jaccard index of the content-word sets (lower-cased,
light stemming, stop words dropped); kept fast by comparing only texts that share a content word.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9][a-z0-9+#._-]*")
_STOP = frozenset(
    "a an and the of to in on for with from by into using use via at as is are be or its it this that "
    "your their when how fix fixing resolve resolving debug debugging handle handling".split()
)


def content_words(text: str) -> frozenset[str]:
    words = set()
    for word in _WORD.findall(text.lower()):
        word = word.strip("._-")
        if not word or word in _STOP:
            continue
        for suffix in ("ing", "es", "s", "ed"):
            if len(word) > len(suffix) + 3 and word.endswith(suffix):
                word = word[: -len(suffix)]
                break
        words.add(word)
    return frozenset(words)


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@dataclass(frozen=True)
class Duplicate:
    """``texts[index]`` repeats ``of``: an earlier kept text (``of_earlier``: one of ``earlier``)."""

    index: int
    of_index: int
    score: float
    of_earlier: bool = False


def find_duplicates(texts: list[str], threshold: float, earlier: Sequence[str] = ()) -> list[Duplicate]:
    """Texts at or above ``threshold`` similar to an earlier kept text, or to one of
    ``earlier`` (what a campaign's previous draws kept).

    Two texts with no content word in common have similarity 0, so each text is only
    compared with the kept texts that share a word with it (an inverted index): a campaign
    checking a draw against thousands of earlier seeds stays fast.
    """
    if threshold <= 0:
        raise ValueError("threshold must be above 0")
    words_of: list[frozenset[str]] = []
    origin: list[tuple[bool, int]] = []  # (from earlier?, index there) of each kept text
    by_word: dict[str, list[int]] = defaultdict(list)

    def keep(words: frozenset[str], from_earlier: bool, index: int) -> None:
        position = len(words_of)
        words_of.append(words)
        origin.append((from_earlier, index))
        for word in words:
            by_word[word].append(position)

    for index, text in enumerate(earlier):
        keep(content_words(text), True, index)
    dropped: list[Duplicate] = []
    for index, text in enumerate(texts):
        words = content_words(text)
        candidates = {k for word in words for k in by_word.get(word, ())} if words else set(range(len(words_of)))
        best = max(((similarity(words, words_of[k]), k) for k in candidates), default=(0.0, 0))  # ties: the latest kept
        if best[0] >= threshold:
            from_earlier, of_index = origin[best[1]]
            dropped.append(Duplicate(index, of_index, round(best[0], 3), from_earlier))
        else:
            keep(words, False, index)
    return dropped
