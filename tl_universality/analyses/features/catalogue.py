"""The catalogue of neuron families (docs/concepts.md, "Neuron families"): register, look up,
list."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

# ---------------------------------------------------------------------------------------------
# The family catalogue

UNIGRAM = "unigram"
ALPHABET = "alphabet"
PREVIOUS_TOKEN = "previous-token"
POSITION = "position"
SYNTAX = "syntax"
SEMANTIC = "semantic"
TOKEN_PROPERTY = "token-property"
NO_FAMILY = "none"
"""The label of a neuron that no feature explains well enough."""


@dataclass(frozen=True)
class Family:
    """A neuron family: its name, membership threshold and which token sets belong to it.

    Attributes:
        name: The family's label (``"unigram"``, ``"alphabet"``, ...).
        threshold: A neuron belongs to the family when its best feature of this family has a
            variance reduction above this.
        description: One line saying what the family's features are.
        token_sets: ``fnmatch`` patterns of token-set names (:mod:`tl_universality.data.token_sets`)
            whose current-token features belong to this family, e.g. ``("first_letter_*",)``.
    """

    name: str
    threshold: float = 0.5
    description: str = ""
    token_sets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"A family needs a non-empty string name, got {self.name!r}.")
        if self.name == NO_FAMILY:
            raise ValueError(f"{NO_FAMILY!r} is the label of unexplained neurons, not a family.")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(
                f"Family {self.name!r}: threshold is a variance reduction in [0, 1], got"
                f" {self.threshold}."
            )
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "token_sets", tuple(self.token_sets))


_FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    threshold: float = 0.5,
    *,
    description: str = "",
    token_sets: Iterable[str] = (),
    replace: bool = False,
) -> Family:
    """Add a family to the catalogue; ``ValueError`` if the name is taken (unless ``replace``).

    Token sets are matched against the families' ``token_sets`` patterns newest first, so a
    family registered later can claim token sets from a built-in one.

    Examples:
        >>> fam = register_family("doc_currency", 0.4, token_sets=["doc_dollar*"])
        >>> token_set_family("doc_dollar_sign"), family_thresholds()["doc_currency"]
        ('doc_currency', 0.4)
        >>> register_family("doc_currency")
        Traceback (most recent call last):
        ...
        ValueError: A family named 'doc_currency' is already registered ...
        >>> unregister_family("doc_currency")
    """
    if name in _FAMILIES and not replace:
        raise ValueError(
            f"A family named {name!r} is already registered ({_FAMILIES[name].description!r}, "
            f"threshold {_FAMILIES[name].threshold}). Choose another name or pass replace=True."
        )
    family = Family(name, threshold, description, tuple(token_sets))
    _FAMILIES.pop(name, None)  # a replaced family moves to the end: newest patterns win
    _FAMILIES[name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family from the catalogue (``KeyError`` if there is none of that name)."""
    get_family(name)
    del _FAMILIES[name]


def get_family(name: str) -> Family:
    """The registered :class:`Family` called ``name``, with the known names if it is unknown."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(
            f"No family named {name!r}. Registered: {', '.join(_FAMILIES)}. Add one with"
            f" tl_universality.analyses.features.register_family({name!r}, threshold=...)."
        ) from None


def list_families() -> pd.DataFrame:
    """The catalogue as a table: ``family, threshold, description, token_sets``.

    Examples:
        >>> table = list_families().set_index("family")
        >>> table.loc[["unigram", "alphabet"], "threshold"].tolist()
        [0.5, 0.35]
    """
    return pd.DataFrame(
        {
            "family": [f.name for f in _FAMILIES.values()],
            "threshold": [f.threshold for f in _FAMILIES.values()],
            "description": [f.description for f in _FAMILIES.values()],
            "token_sets": [", ".join(f.token_sets) for f in _FAMILIES.values()],
        }
    )


def family_thresholds(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """``{family: threshold}`` of the catalogue, with ``overrides`` applied (unknown: KeyError).

    Examples:
        >>> family_thresholds({"alphabet": 0.3})["alphabet"]
        0.3
    """
    thresholds = {name: f.threshold for name, f in _FAMILIES.items()}
    for name, value in (overrides or {}).items():
        get_family(name)
        thresholds[name] = float(value)
    return thresholds


def token_set_family(set_name: str) -> str:
    """The family of the current-token feature of a token set (newest matching family first).

    Token sets no family claims are :data:`TOKEN_PROPERTY`.

    Examples:
        >>> token_set_family("first_letter_q"), token_set_family("year")
        ('alphabet', 'number')
    """
    for family in reversed(_FAMILIES.values()):
        if any(fnmatch.fnmatchcase(set_name, p) for p in family.token_sets):
            return family.name
    return TOKEN_PROPERTY


def _register_builtin_families() -> None:
    builtins = [
        (UNIGRAM, 0.5, "the current token is one given token (normalised)", ()),
        (ALPHABET, 0.35, "the current token starts with a given letter", ("first_letter_*",)),
        (PREVIOUS_TOKEN, 0.5, "a unigram or token-set feature of the previous token", ()),
        (POSITION, 0.5, "the token's position in its sequence (bins and thresholds)", ()),
        (SYNTAX, 0.5, "a syntactic label from a parser (part of speech, dependency, ...)", ()),
        (SEMANTIC, 0.5, "a topic or meaning label (user features)", ()),
        ("case", 0.5, "letter case of the token", ("capitalised", "all_caps", "lowercase_word")),
        ("number", 0.5, "digits, years", ("numeric", "year", "single_digit")),
        (
            "punctuation",
            0.5,
            "punctuation classes",
            ("punctuation", "sentence_end", "comma", "colon_semicolon", "quote", "dash")
            + ("open_bracket", "close_bracket"),
        ),
        (
            "space",
            0.5,
            "leading space, whitespace, newlines",
            ("leading_space", "whitespace", "newline"),
        ),
        ("morphology", 0.5, "common prefixes and suffixes", ("prefix_*", "suffix_*")),
        ("word-list", 0.5, "months, weekdays, pronoun classes", ("months", "weekdays", "pronoun*")),
        (TOKEN_PROPERTY, 0.5, "any other token set (e.g. a user-registered one)", ()),
    ]
    for name, threshold, description, sets in builtins:
        register_family(name, threshold, description=description, token_sets=sets)


_register_builtin_families()

BUILTIN_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)
"""Names of the families defined here, in catalogue order."""
