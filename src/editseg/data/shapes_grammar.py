"""Referring-expression grammar of the shapes world: structures, resolver, realiser and parser.

An :class:`Expression` is a structured query (kind + head description + optional spatial
direction, size superlative or relation to an anchor). :func:`resolve` evaluates it against a scene
independently of how it was generated; :func:`valid_expressions` enumerates the expressions that
pick out exactly one given object (and need their modifier); :func:`realize_expression` turns a
structure into words with random synonyms and :func:`parse_expression` maps the words back.

Resolution semantics (all positions are normalised object centres, y downwards):

* attribute: every object matching the head description.
* spatial ("the leftmost circle"): among head matches, the extreme one in the direction; objects
  within ``POSITION_MARGIN`` of the extreme are tied and all returned (visually ambiguous).
* superlative ("the biggest triangle"): head matches with the extreme size category (ties returned).
* relational ("the square above the blue star"): the anchor description must match exactly one
  object, otherwise the result is empty (presupposition failure). Head matches whose offset from the
  anchor in the relation's direction is at least ``POSITION_MARGIN`` are returned, together with any
  in the grey zone ``0 < offset < POSITION_MARGIN`` (so "unique" means clearly unique); when no head
  match is clearly related the result is empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product

import numpy as np

from editseg.data.shapes_world import SceneObject, pick

KINDS: tuple[str, ...] = ("attribute", "spatial", "relational", "superlative")
DIRECTIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
EXTREMES: tuple[str, ...] = ("largest", "smallest")
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")

#: Minimum centre offset (fraction of the image side) for a spatial comparison to count as clear.
POSITION_MARGIN = 0.08

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus", "plus sign"),
}
GENERIC_WORDS: tuple[str, ...] = ("shape", "object", "thing")
COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red",),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow",),
    "purple": ("purple", "violet"),
    "orange": ("orange",),
    "white": ("white",),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
DIRECTION_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "left": ("left", "leftmost"),
    "right": ("right", "rightmost"),
    "top": ("top", "topmost", "upper", "uppermost"),
    "bottom": ("bottom", "bottommost", "lower", "lowest"),
}
DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
}
EXTREME_WORDS: dict[str, tuple[str, ...]] = {
    "largest": ("biggest", "largest"),
    "smallest": ("smallest", "tiniest"),
}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left_of": ("left of", "to the left of"),
    "right_of": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
#: Leading article of the whole expression and its probability ("" = no article).
ARTICLES: tuple[tuple[str, float], ...] = (("the", 0.85), ("", 0.15))

_SIZE_RANK = {"small": 0, "large": 1}


@dataclass(frozen=True)
class Description:
    """A noun phrase as attribute constraints; ``None`` means unconstrained."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        """Whether ``obj`` satisfies every given attribute."""
        return (
            (self.shape is None or obj.shape == self.shape)
            and (self.color is None or obj.color == self.color)
            and (self.size is None or obj.size == self.size)
        )

    @property
    def n_attributes(self) -> int:
        """How many attributes are constrained."""
        return sum(a is not None for a in (self.shape, self.color, self.size))


@dataclass(frozen=True)
class Expression:
    """A structured referring expression (see the module docstring for the semantics)."""

    kind: str
    head: Description
    direction: str | None = None
    extreme: str | None = None
    relation: str | None = None
    anchor: Description | None = field(default=None)

    def __post_init__(self) -> None:
        expected = {
            "attribute": (False, False, False),
            "spatial": (True, False, False),
            "superlative": (False, True, False),
            "relational": (False, False, True),
        }
        if self.kind not in expected:
            raise ValueError(f"unknown expression kind {self.kind!r}")
        given = (self.direction is not None, self.extreme is not None, self.relation is not None)
        if given != expected[self.kind] or (self.relation is None) != (self.anchor is None):
            raise ValueError(f"inconsistent fields for a {self.kind} expression: {self}")


# ----------------------------------------------------------------------------- resolver


def _objects(scene) -> Sequence[SceneObject]:
    return scene.objects if hasattr(scene, "objects") else scene


def _position_key(obj: SceneObject, direction: str) -> float:
    """Larger means further in ``direction``."""
    x, y = obj.center
    return {"left": -x, "right": x, "top": -y, "bottom": y}[direction]


def _extreme_position(objects: Sequence[SceneObject], cands: list[int], direction: str) -> list[int]:
    if not cands:
        return []
    best = max(_position_key(objects[i], direction) for i in cands)
    return [i for i in cands if _position_key(objects[i], direction) > best - POSITION_MARGIN]


def _extreme_size(objects: Sequence[SceneObject], cands: list[int], extreme: str) -> list[int]:
    if not cands:
        return []
    ranks = [_SIZE_RANK[objects[i].size] for i in cands]
    target = max(ranks) if extreme == "largest" else min(ranks)
    return [i for i, r in zip(cands, ranks) if r == target]


def _relation_offset(obj: SceneObject, anchor: SceneObject, relation: str) -> float:
    """How far ``obj`` is from ``anchor`` in the relation's direction (positive = holds)."""
    (x, y), (ax, ay) = obj.center, anchor.center
    return {"left_of": ax - x, "right_of": x - ax, "above": ay - y, "below": y - ay}[relation]


def resolve(scene, expression: Expression) -> list[int]:
    """Indices of the objects of ``scene`` (a sequence of objects or anything with ``.objects``)
    that ``expression`` may refer to; a well-formed referring expression yields exactly one."""
    objects = _objects(scene)
    cands = [i for i, obj in enumerate(objects) if expression.head.matches(obj)]
    if expression.kind == "attribute":
        return cands
    if expression.kind == "spatial":
        return _extreme_position(objects, cands, expression.direction)
    if expression.kind == "superlative":
        return _extreme_size(objects, cands, expression.extreme)
    anchors = [i for i, obj in enumerate(objects) if expression.anchor.matches(obj)]
    if len(anchors) != 1:
        return []
    anchor = objects[anchors[0]]
    offsets = {i: _relation_offset(objects[i], anchor, expression.relation) for i in cands}
    clear = [i for i in cands if i != anchors[0] and offsets[i] >= POSITION_MARGIN]
    grey = [i for i in cands if i != anchors[0] and 0 < offsets[i] < POSITION_MARGIN]
    return sorted(clear + grey) if clear else []


# ----------------------------------------------------------------------------- enumeration


def _descriptions(obj: SceneObject, with_size: bool = True) -> list[Description]:
    """Every description ``obj`` satisfies (including the empty one)."""
    sizes = (obj.size, None) if with_size else (None,)
    return [Description(s, c, z) for s, c, z in product((obj.shape, None), (obj.color, None), sizes)]


def _count(objects: Sequence[SceneObject], desc: Description) -> int:
    return sum(desc.matches(o) for o in objects)


def _anchor_descriptions(objects: Sequence[SceneObject], index: int) -> list[Description]:
    """The shortest non-empty descriptions that single out object ``index``."""
    unique = [
        d for d in _descriptions(objects[index]) if d.n_attributes and _count(objects, d) == 1
    ]
    if not unique:
        return []
    shortest = min(d.n_attributes for d in unique)
    return [d for d in unique if d.n_attributes == shortest]


def valid_expressions(objects: Sequence[SceneObject], target: int) -> dict[str, list[Expression]]:
    """Per kind, the expressions that resolve to exactly ``[target]`` and need their modifier.

    Attribute heads must name a colour or a size; spatial, superlative and relational heads must
    match at least two objects (otherwise the modifier would be redundant); superlative heads do not
    name a size.
    """
    obj = objects[target]
    out: dict[str, list[Expression]] = {kind: [] for kind in KINDS}

    def keep(expr: Expression) -> None:
        if resolve(objects, expr) == [target]:
            out[expr.kind].append(expr)

    for head in _descriptions(obj):
        if head.color is not None or head.size is not None:
            keep(Expression("attribute", head))
        if _count(objects, head) < 2:
            continue
        for direction in DIRECTIONS:
            keep(Expression("spatial", head, direction=direction))
        if head.size is None:
            for extreme in EXTREMES:
                keep(Expression("superlative", head, extreme=extreme))
        for j in range(len(objects)):
            if j == target:
                continue
            for anchor in _anchor_descriptions(objects, j):
                for relation in RELATIONS:
                    keep(Expression("relational", head, relation=relation, anchor=anchor))
    return out


def expression_weight(expr: Expression) -> float:
    """Sampling weight: halved per colour/size word, and lower for heads without a shape noun.

    Shorter expressions read more naturally; naming the shape keeps generic heads ("the leftmost
    object") a minority.
    """
    descs = [expr.head] + ([expr.anchor] if expr.anchor is not None else [])
    modifiers = sum((d.color is not None) + (d.size is not None) for d in descs)
    return 0.5**modifiers * (1.0 if expr.head.shape is not None else 0.3)


# ----------------------------------------------------------------------------- realisation


def _noun_phrase(desc: Description, rng: np.random.Generator) -> str:
    words = []
    if desc.size is not None:
        words.append(pick(rng, SIZE_WORDS[desc.size]))
    if desc.color is not None:
        words.append(pick(rng, COLOR_WORDS[desc.color]))
    words.append(pick(rng, SHAPE_WORDS[desc.shape]) if desc.shape else pick(rng, GENERIC_WORDS))
    return " ".join(words)


def realize_expression(expr: Expression, rng: np.random.Generator) -> str:
    """Words for ``expr``, with synonyms and the leading article drawn from ``rng``."""
    article = pick(rng, [a for a, _ in ARTICLES], [p for _, p in ARTICLES])
    np_words = _noun_phrase(expr.head, rng)
    if expr.kind == "attribute":
        body = np_words
    elif expr.kind == "spatial":
        if rng.random() < 0.7:
            body = f"{pick(rng, DIRECTION_ADJECTIVES[expr.direction])} {np_words}"
        else:
            body = f"{np_words} {pick(rng, DIRECTION_PHRASES[expr.direction])}"
    elif expr.kind == "superlative":
        body = f"{pick(rng, EXTREME_WORDS[expr.extreme])} {np_words}"
    else:
        relation = pick(rng, RELATION_WORDS[expr.relation])
        body = f"{np_words} {relation} the {_noun_phrase(expr.anchor, rng)}"
    return f"{article} {body}" if article else body


# ----------------------------------------------------------------------------- parsing


def _lookup(table: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {word: key for key, words in table.items() for word in words}


_SIZE_LOOKUP = _lookup(SIZE_WORDS)
_COLOR_LOOKUP = _lookup(COLOR_WORDS)
_SHAPE_LOOKUP = _lookup(SHAPE_WORDS)
_DIRECTION_LOOKUP = _lookup(DIRECTION_ADJECTIVES)
_EXTREME_LOOKUP = _lookup(EXTREME_WORDS)


def _phrases_longest_first(table: dict[str, tuple[str, ...]]) -> list[tuple[list[str], str]]:
    pairs = [(phrase.split(), key) for key, phrases in table.items() for phrase in phrases]
    return sorted(pairs, key=lambda p: -len(p[0]))


def _find(words: list[str], phrase: list[str]) -> int | None:
    for start in range(len(words) - len(phrase) + 1):
        if words[start : start + len(phrase)] == phrase:
            return start
    return None


def _parse_noun_phrase(words: list[str]) -> Description:
    rest = list(words)
    size = _SIZE_LOOKUP.get(rest[0]) if rest else None
    if size is not None:
        rest = rest[1:]
    color = _COLOR_LOOKUP.get(rest[0]) if rest else None
    if color is not None:
        rest = rest[1:]
    noun = " ".join(rest)
    if noun in GENERIC_WORDS:
        return Description(None, color, size)
    if noun in _SHAPE_LOOKUP:
        return Description(_SHAPE_LOOKUP[noun], color, size)
    raise ValueError(f"cannot parse noun phrase {' '.join(words)!r}")


def _strip_article(words: list[str]) -> list[str]:
    return words[1:] if words and words[0] == "the" else words


def parse_expression(text: str) -> Expression:
    """Inverse of :func:`realize_expression` for the grammar's own vocabulary."""
    words = _strip_article(text.lower().split())
    for phrase, relation in _phrases_longest_first(RELATION_WORDS):
        at = _find(words, phrase)
        if at is not None:
            head = _parse_noun_phrase(words[:at])
            anchor = _parse_noun_phrase(_strip_article(words[at + len(phrase) :]))
            return Expression("relational", head, relation=relation, anchor=anchor)
    for phrase, direction in _phrases_longest_first(DIRECTION_PHRASES):
        if len(words) > len(phrase) and words[-len(phrase) :] == phrase:
            return Expression("spatial", _parse_noun_phrase(words[: -len(phrase)]), direction=direction)
    if words and words[0] in _DIRECTION_LOOKUP:
        return Expression("spatial", _parse_noun_phrase(words[1:]), direction=_DIRECTION_LOOKUP[words[0]])
    if words and words[0] in _EXTREME_LOOKUP:
        return Expression("superlative", _parse_noun_phrase(words[1:]), extreme=_EXTREME_LOOKUP[words[0]])
    return Expression("attribute", _parse_noun_phrase(words))
