"""Ref-Diff's text analysis: the expression's root/subject word and its direction clue.

Root word (paper §3.2: "the ROOT element in the syntax tree"; its released code takes the first
token whose dependency is ROOT or a subject): with spaCy and an official English model the user
installed (``python -m spacy download en_core_web_sm``) that rule is applied to the parse.
Without one, a documented rule stands in: the head noun of the leading phrase, i.e. the last
word before the first relation word (preposition, relative pronoun, verb-like connective, or an
"-ing" participle other than the nouns in :data:`ING_NOUNS`) that is neither a direction word nor
a stop word ("the man in the red shirt" → "man", "left zebra" → "zebra", "black horse jumping" →
"horse").

Direction clue (paper §3.3, eq. 6): the first of left / right / top / bottom (and their variants
in :data:`DIRECTION_WORDS`) that occurs in the expression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

DIRECTION_WORDS = {
    "left": "left", "leftmost": "left",
    "right": "right", "rightmost": "right",
    "top": "top", "topmost": "top", "upper": "top",
    "bottom": "bottom", "bottommost": "bottom", "lower": "bottom",
}
RELATION_WORDS = frozenset(
    """in on at with to of from by near next beside behind under over above below between across along
    around against toward towards upon inside outside that who which whose where while holding wearing
    sitting standing walking looking carrying eating riding having has is are was were""".split()
)
ING_NOUNS = frozenset(
    """building ring thing king painting clothing ceiling string wing sibling wedding evening morning topping
    frosting icing railing awning filling stuffing pudding dumpling sapling seedling duckling darling""".split()
)
STOP_WORDS = frozenset("a an the this that these those his her its their my your our one".split())
PARSERS = ("auto", "spacy", "rules")
SPACY_MODEL = "en_core_web_sm"
_WORD = re.compile(r"[\w']+")


@dataclass(frozen=True)
class RootWord:
    """The root/subject word, its character span in the expression and the parser that found it."""

    text: str
    span: tuple[int, int]
    parser: str


def root_by_rules(expression: str) -> RootWord:
    """The rule-based fallback (see the module docstring)."""
    words = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(expression)]
    if not words:
        return RootWord(expression, (0, len(expression)), "rules")
    leading = []
    for index, word in enumerate(words):
        lowered = word[0].lower()
        participle = len(lowered) > 4 and lowered.endswith("ing") and lowered not in ING_NOUNS
        if index > 0 and (lowered in RELATION_WORDS or participle):
            break
        leading.append(word)
    candidates = [w for w in leading if w[0].lower() not in DIRECTION_WORDS and w[0].lower() not in STOP_WORDS]
    text, start, end = (candidates or leading)[-1]
    return RootWord(text, (start, end), "rules")


def root_from_doc(doc, expression: str) -> RootWord:
    """The first token whose dependency label is ROOT or a subject (Ref-Diff's released rule)."""
    for token in doc:
        if "ROOT" in token.dep_ or "subj" in token.dep_:
            return RootWord(token.text, (token.idx, token.idx + len(token.text)), "spacy")
    return root_by_rules(expression)


@lru_cache(maxsize=2)
def _spacy(model: str):
    try:
        import spacy

        return spacy.load(model)
    except (ImportError, OSError):
        return None


def root_word(expression: str, parser: str = "auto", spacy_model: str = SPACY_MODEL) -> RootWord:
    """The root/subject word: ``spacy`` (error if unavailable), ``rules``, or ``auto`` (spaCy when installed)."""
    if parser not in PARSERS:
        raise ValueError(f"parser must be one of {PARSERS}, got {parser!r}")
    if parser != "rules":
        nlp = _spacy(spacy_model)
        if nlp is not None:
            return root_from_doc(nlp(expression), expression)
        if parser == "spacy":
            from ..errors import ConfigError

            raise ConfigError(
                f"spaCy or its model {spacy_model!r} is not installed: pip install spacy && "
                f"python -m spacy download {spacy_model} (or use the rule-based parser)."
            )
    return root_by_rules(expression)


def direction_clue(expression: str, directions: tuple[str, ...] = ("left", "right", "top", "bottom")) -> str | None:
    """The first direction word of the expression, canonical (left/right/top/bottom), among ``directions``."""
    for match in _WORD.finditer(expression.lower()):
        canonical = DIRECTION_WORDS.get(match.group())
        if canonical in directions:
            return canonical
    return None
