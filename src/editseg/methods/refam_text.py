"""Noun phrase and spatial cues of a referring expression (RefAM App. C, after HybridGL).

Two parsers, same output (:class:`ParsedExpression`):

- ``spacy``: a dependency-parsed ``Doc`` from an official English spaCy model that the user
  installed (``python -m spacy download en_core_web_sm``); the noun phrase is the noun chunk
  holding the sentence root (else the first noun chunk). editseg never installs or depends on
  third-party registry copies of spaCy models.
- ``rules`` (fallback, used when spaCy or a model is missing): the noun phrase runs from the start
  of the expression to the first relation word (a preposition, relative pronoun or verb-like
  connective from :data:`BREAK_WORDS`), e.g. "the man in the red shirt" → "the man".

Spatial cues: the absolute terms (left, right, top, bottom, middle and their variants) found in
the expression. A term followed by "of"/"to"/"than" ("left of the dog") is *relative*: it is
reported in ``relative`` and not turned into a positional prior (our choice: RefAM compares
centroids of candidate regions for relative relations, and its argmax pipeline has no candidate
regions; see README).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

SPATIAL_WORDS = {
    "left": "left", "leftmost": "left", "lefty": "left",
    "right": "right", "rightmost": "right",
    "top": "top", "upper": "top", "topmost": "top",
    "bottom": "bottom", "lower": "bottom", "bottommost": "bottom",
    "middle": "middle", "center": "middle", "centre": "middle", "central": "middle",
}
RELATIVE_MARKERS = ("of", "to", "than")
BREAK_WORDS = frozenset(
    """in on at with to of from by near next beside behind under over above below between across along
    around against toward towards upon inside outside that who which whose where while holding wearing
    sitting standing walking looking carrying eating riding having has is are was were""".split()
)
DEFAULT_SPACY_MODEL = "en_core_web_sm"
_WORD = re.compile(r"[\w']+")


@dataclass
class ParsedExpression:
    """``noun_phrase`` and its character ``span`` in the expression; absolute spatial ``terms``
    (canonical: left/right/top/bottom/middle); ``relative`` spatial words; the ``parser`` used."""

    expression: str
    noun_phrase: str
    span: tuple[int, int]
    terms: list[str] = field(default_factory=list)
    relative: list[str] = field(default_factory=list)
    parser: str = "rules"


def _spatial(words: list[tuple[str, int]]) -> tuple[list[str], list[str]]:
    terms, relative = [], []
    lowered = [w.lower() for w, _ in words]
    for i, word in enumerate(lowered):
        canonical = SPATIAL_WORDS.get(word)
        if canonical is None:
            continue
        if i + 1 < len(lowered) and lowered[i + 1] in RELATIVE_MARKERS:
            relative.append(word)
        elif canonical not in terms:
            terms.append(canonical)
    return terms, relative


def parse_rules(expression: str) -> ParsedExpression:
    """The documented rule-based fallback (no model needed)."""
    words = [(m.group(), m.start()) for m in _WORD.finditer(expression)]
    end = len(expression)
    for index, (word, start) in enumerate(words):
        if index > 0 and word.lower() in BREAK_WORDS:
            end = start
            break
    phrase = expression[:end].rstrip()
    if not any(ch.isalnum() for ch in phrase):
        phrase, end = expression, len(expression)
    terms, relative = _spatial(words)
    return ParsedExpression(expression, phrase, (0, len(phrase)), terms, relative, "rules")


def parse_doc(doc: Any, expression: str) -> ParsedExpression:
    """From a dependency-parsed spaCy ``Doc`` of ``expression``: the root's noun chunk (else the first)."""
    chunks = list(doc.noun_chunks)
    root = next((t for t in doc if t.dep_ == "ROOT"), None)
    chosen = next((c for c in chunks if root is not None and c.start <= root.i < c.end), None)
    if chosen is None and chunks:
        chosen = chunks[0]
    words = [(t.text, t.idx) for t in doc if not t.is_punct]
    terms, relative = _spatial(words)
    if chosen is None:
        return ParsedExpression(expression, expression, (0, len(expression)), terms, relative, "spacy")
    start, end = chosen.start_char, chosen.end_char
    return ParsedExpression(expression, expression[start:end], (start, end), terms, relative, "spacy")


class ExpressionParser:
    """``parser="auto"`` uses spaCy with ``model`` when both are installed, else the rules;
    ``"spacy"`` insists (clear error when missing); ``"rules"`` never loads spaCy."""

    def __init__(self, parser: str = "auto", model: str = DEFAULT_SPACY_MODEL, nlp: Any = None):
        if parser not in ("auto", "spacy", "rules"):
            raise ValueError(f"parser must be auto, spacy or rules; got {parser!r}")
        self.nlp = nlp
        if nlp is None and parser != "rules":
            self.nlp = _load_spacy(model, required=parser == "spacy")
        self.name = "spacy" if self.nlp is not None else "rules"

    def __call__(self, expression: str) -> ParsedExpression:
        if self.nlp is None:
            return parse_rules(expression)
        return parse_doc(self.nlp(expression), expression)


def _load_spacy(model: str, required: bool):
    from ..errors import ConfigError

    try:
        import spacy
    except ImportError:
        if required:
            raise ConfigError("The spaCy parser needs spaCy: pip install 'editseg[spacy]'.") from None
        return None
    try:
        return spacy.load(model)
    except OSError:
        if required:
            raise ConfigError(
                f"spaCy model {model!r} is not installed. Install an official English model "
                f"(python -m spacy download {model}) or use the rule-based parser (--refam-parser rules)."
            ) from None
        return None
