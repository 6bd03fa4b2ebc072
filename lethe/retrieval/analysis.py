"""Text analysis for sparse retrieval: lower-case, regex split, stopwords, Snowball stemming.

The defaults reproduce bm25s' tokenizer (scikit-learn's token pattern, bm25s' English stopword
list, removed before stemming) so that our BM25 and bm25s see identical tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: bm25s' English stopword list (``bm25s.stopwords.STOPWORDS_EN``)
STOPWORDS_EN: tuple[str, ...] = (
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with"
).split()


@dataclass
class Analyzer:
    """Turns text into index terms. ``stemmer``: a Snowball language name or None."""

    stemmer: str | None = "english"
    stopwords: str | Sequence[str] | None = "en"
    lower: bool = True
    pattern: str = r"(?u)\b\w\w+\b"
    _cache: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._split = re.compile(self.pattern).findall
        self._stop = frozenset(_stopword_list(self.stopwords))
        self._stem = _make_stemmer(self.stemmer)

    def __call__(self, text: str) -> list[str]:
        """The terms of one text, in order, duplicates kept."""
        if self.lower:
            text = text.lower()
        words = [w for w in self._split(text) if w not in self._stop]
        if self._stem is None:
            return words
        cache = self._cache
        missing = [w for w in set(words) if w not in cache]
        if missing:
            cache.update(zip(missing, self._stem(missing)))
        return [cache[w] for w in words]

    def config(self) -> dict[str, Any]:
        """A JSON-able description (saved with an index)."""
        d = asdict(self)
        d.pop("_cache")
        if d["stopwords"] is not None and not isinstance(d["stopwords"], str):
            d["stopwords"] = list(d["stopwords"])
        return d


def _stopword_list(stopwords: str | Sequence[str] | None) -> Sequence[str]:
    if stopwords is None:
        return ()
    if isinstance(stopwords, str):
        if stopwords in ("en", "english"):
            return STOPWORDS_EN
        raise ValueError(f"unknown stopword list {stopwords!r}; choose from ['en', None] or pass a list")
    return stopwords


def _make_stemmer(language: str | None):  # noqa: ANN202
    if language is None:
        return None
    try:
        import Stemmer
    except ImportError as exc:  # pragma: no cover - PyStemmer is a dependency
        from lethe.errors import MissingDependency

        raise MissingDependency("stemming needs PyStemmer: pip install PyStemmer") from exc
    try:
        return Stemmer.Stemmer(language).stemWords
    except KeyError as exc:
        raise ValueError(
            f"unknown stemmer language {language!r}; choose from {Stemmer.algorithms()}"
        ) from exc
