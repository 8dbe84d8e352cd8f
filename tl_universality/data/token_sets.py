"""Named token sets: boolean masks over a tokenizer's vocabulary, built from the token strings.

The paper explains neurons with token-level features (docs/concepts.md, "Neuron families") and
tests whether late
neurons raise or lower the logits of a token *set* (§1.4). Both need the same sets: tokens that
start with a space, are capitalised, are a year, a month, a pronoun, ... . This module keeps them
in one registry of predicates on the decoded token string, so the families analysis and the
token-set scores see identical definitions, and users add their own by name.

Token strings are decoded the way the tokenizer writes text, not the way it stores its vocabulary:
a byte-level BPE token ``"Ġthe"`` is the string ``" the"`` (the ``Ġ`` marker is the space byte),
``"Ã©"`` is ``"é"``, and a SentencePiece ``"▁the"`` is ``" the"``. Token ids the tokenizer does not
know (a model's padded vocabulary) decode to ``""`` and special tokens (``<|endoftext|>``) belong to
no set.

Examples:
    >>> masks = token_set_masks(["<s>", " the", " January", "The", " 1999", "7", "(", ")."],
    ...                         names=["leading_space", "capitalised", "year", "open_bracket"])
    >>> {name: mask.nonzero()[0].tolist() for name, mask in masks.items()}
    {'leading_space': [1, 2, 4], 'capitalised': [2, 3], 'year': [4], 'open_bracket': [6]}
"""

from __future__ import annotations

import json
import string
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from jaxtyping import Bool

TokenPredicate = Callable[[str], bool]
"""A token set's definition: ``fn(token_string) -> bool`` on the decoded token string (leading
space included, e.g. ``" January"``)."""


@dataclass(frozen=True)
class TokenSet:
    """A registered token set: its name, predicate and a one-line description."""

    name: str
    fn: TokenPredicate
    description: str = ""


_REGISTRY: dict[str, TokenSet] = {}


def register_token_set(
    name: str, fn: TokenPredicate | None = None, *, description: str = ""
) -> Any:
    """Register a token set under ``name``; raises ``ValueError`` if the name is taken.

    Use as a call or as a decorator. ``fn`` receives the decoded token string (with its leading
    space, if any) and returns whether the token belongs to the set.

    Examples:
        >>> @register_token_set("doc_example_dollar", description="contains a dollar sign")
        ... def _dollar(s):
        ...     return "$" in s
        >>> token_set_masks([" $5", "5"], names=["doc_example_dollar"])["doc_example_dollar"]
        array([ True, False])
        >>> register_token_set("doc_example_dollar", lambda s: True)
        Traceback (most recent call last):
        ...
        ValueError: A token set named 'doc_example_dollar' is already registered ...
        >>> unregister_token_set("doc_example_dollar")
    """

    def add(fn: TokenPredicate) -> TokenPredicate:
        if not isinstance(name, str) or not name:
            raise ValueError(f"A token set needs a non-empty string name, got {name!r}.")
        if name in _REGISTRY:
            existing = _REGISTRY[name].description or repr(_REGISTRY[name].fn)
            raise ValueError(
                f"A token set named {name!r} is already registered ({existing}). Choose another"
                f" name, or call unregister_token_set({name!r}) first to replace it."
            )
        if not callable(fn):
            raise TypeError(f"Token set {name!r}: fn must be callable (str -> bool), got {fn!r}.")
        _REGISTRY[name] = TokenSet(name, fn, description)
        return fn

    if fn is None:
        return add
    add(fn)
    return None


def unregister_token_set(name: str) -> None:
    """Remove a registered token set (``KeyError`` if there is none of that name)."""
    if name not in _REGISTRY:
        raise KeyError(f"No token set named {name!r}. Registered: {', '.join(_REGISTRY)}.")
    del _REGISTRY[name]


def list_token_sets() -> dict[str, str]:
    """``{name: description}`` of every registered token set, in registration order.

    Examples:
        >>> sets = list_token_sets()
        >>> sets["year"]
        'an integer from 1490 to 2200 (four digits, optional leading space)'
        >>> "first_letter_q" in sets and "pronoun_third_plural" in sets
        True
    """
    return {name: ts.description for name, ts in _REGISTRY.items()}


def get_token_set(name: str) -> TokenSet:
    """The registered :class:`TokenSet` called ``name``, with a helpful error if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(
            f"No token set named {name!r}.{hint} See list_token_sets() for all of them, or"
            " register_token_set(name, fn) to add one."
        ) from None


# ---------------------------------------------------------------------------------------------
# Decoding the vocabulary


def _bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE's reversible byte -> printable character table (GPT-2's alphabet).

    Printable Latin-1 bytes map to themselves; the rest (control bytes, space, ...) are shifted
    to code points 256+, which is why a space shows up as ``Ġ`` (256 + 32) and a newline as ``Ċ``.
    """
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


def _decoder_kind(tokenizer: Any) -> str:
    """``"byte_level"``, ``"metaspace"``, ``"wordpiece"`` or ``"unknown"`` for a HF tokenizer."""
    if hasattr(tokenizer, "byte_decoder"):  # slow GPT2Tokenizer
        return "byte_level"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # pragma: no cover - exotic backends
            spec = {}
        decoder = spec.get("decoder") or {}
        kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders") or []]
        if "ByteLevel" in kinds:
            return "byte_level"
        if "Metaspace" in kinds:
            return "metaspace"
        if "WordPiece" in kinds:
            return "wordpiece"
    if hasattr(tokenizer, "sp_model"):  # slow SentencePiece tokenizers
        return "metaspace"
    return "unknown"


def _decode_byte_level(token: str) -> str:
    if all(c in _BYTE_DECODER for c in token):
        # A token can hold part of a multi-byte character; show it as U+FFFD, as decode() does.
        return bytes(_BYTE_DECODER[c] for c in token).decode("utf-8", errors="replace")
    return token  # added tokens are stored as plain text


_STRINGS_CACHE: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()


def vocab_strings(tokenizer: Any, d_vocab: int | None = None) -> list[str]:
    """The decoded string of every token id, ``ids 0 .. d_vocab - 1``.

    Byte-level BPE tokens are mapped back through the byte table (``"Ġthe"`` -> ``" the"``),
    SentencePiece's ``▁`` becomes a space, WordPiece's ``##`` continuation prefix is dropped;
    other tokenizers are decoded one id at a time with ``decode([i])``. Ids beyond the tokenizer's
    vocabulary (models often pad ``d_vocab``) give ``""``.

    Args:
        tokenizer: a Hugging Face tokenizer, anything with ``convert_ids_to_tokens`` or ``decode``,
            a model with a ``.tokenizer``, or a plain sequence of token strings (used as is).
        d_vocab: length of the result (default: the model's ``cfg.d_vocab`` when given a model,
            else the tokenizer's size).

    Examples:
        >>> from tokenizers import Tokenizer, decoders, models
        >>> from transformers import PreTrainedTokenizerFast
        >>> backend = Tokenizer(models.BPE(vocab={"<|endoftext|>": 0, "Ġthe": 1, "Ã©": 2},
        ...                                merges=[]))
        >>> backend.decoder = decoders.ByteLevel()
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>")
        >>> vocab_strings(tok, d_vocab=4)
        ['<|endoftext|>', ' the', 'é', '']
    """
    tokenizer, d_vocab = _tokenizer_and_size(tokenizer, d_vocab)
    if isinstance(tokenizer, (list, tuple)):
        strings = [str(s) for s in tokenizer]
    else:
        strings = list(_cached_strings(tokenizer))
    n = len(strings) if d_vocab is None else int(d_vocab)
    return strings[:n] + [""] * max(0, n - len(strings))


def _tokenizer_and_size(tokenizer: Any, d_vocab: int | None) -> tuple[Any, int | None]:
    """Accept a model in place of its tokenizer (and take ``d_vocab`` from its config)."""
    if hasattr(tokenizer, "cfg") and hasattr(tokenizer, "tokenizer"):
        if d_vocab is None:
            d_vocab = int(tokenizer.cfg.d_vocab)
        if tokenizer.tokenizer is None:
            raise ValueError(
                "The model has no tokenizer, so its token strings are unknown. Pass a tokenizer"
                " (or a list of token strings) instead of the model."
            )
        tokenizer = tokenizer.tokenizer
    return tokenizer, d_vocab


def _cached_strings(tokenizer: Any) -> tuple[str, ...]:
    try:
        cached = _STRINGS_CACHE[tokenizer]
        if len(cached) == _tokenizer_size(tokenizer):  # tokens added since: decode again
            return cached
    except (KeyError, TypeError):
        pass
    strings = tuple(_decode_all(tokenizer))
    try:
        _STRINGS_CACHE[tokenizer] = strings
    except TypeError:  # not weak-referenceable: just don't cache
        pass
    return strings


def _tokenizer_size(tokenizer: Any) -> int:
    try:
        return len(tokenizer)
    except TypeError:
        vocab = tokenizer.get_vocab()
        return max(vocab.values()) + 1 if vocab else 0


def _decode_all(tokenizer: Any) -> list[str]:
    n = _tokenizer_size(tokenizer)
    ids = list(range(n))
    if not hasattr(tokenizer, "convert_ids_to_tokens"):
        return [tokenizer.decode([i]) for i in ids]
    raw = [t if t is not None else "" for t in tokenizer.convert_ids_to_tokens(ids)]
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    kind = _decoder_kind(tokenizer)
    if kind == "byte_level":
        return [t if i in special else _decode_byte_level(t) for i, t in enumerate(raw)]
    if kind == "metaspace":
        return [t if i in special else t.replace("▁", " ") for i, t in enumerate(raw)]
    if kind == "wordpiece":
        # "##ing" continues a word; a token without "##" starts one (BERT writes no spaces).
        return [t[2:] if t.startswith("##") else t for t in raw]
    if hasattr(tokenizer, "decode"):
        return [t if i in special else tokenizer.decode([i]) for i, t in enumerate(raw)]
    return raw


def _special_ids(tokenizer: Any) -> set[int]:
    if isinstance(tokenizer, (list, tuple)):
        return set()
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            ids.add(value)
    return ids


def token_set_masks(
    tokenizer: Any,
    names: Iterable[str] | None = None,
    *,
    d_vocab: int | None = None,
    extra: dict[str, TokenPredicate] | None = None,
) -> dict[str, Bool[np.ndarray, " d_vocab"]]:
    """Boolean masks over the vocabulary, one per token set.

    Special tokens (BOS/EOS/padding/unknown) and ids the tokenizer does not know are in no set.

    Args:
        tokenizer: a tokenizer, a model with a ``.tokenizer``, or a list of token strings (see
            :func:`vocab_strings`).
        names: registered set names (default: every registered set, in registration order).
        d_vocab: mask length (default: the model's ``cfg.d_vocab`` or the tokenizer's size).
        extra: further ``{name: predicate}`` sets for this call only, not registered.

    Returns:
        ``{name: mask}`` with ``mask[v]`` true when token ``v`` is in the set.

    Examples:
        >>> masks = token_set_masks([" Monday", "monday", " she", "Her", " 12"],
        ...                         names=["weekdays", "pronoun_third_feminine", "numeric"])
        >>> {k: v.tolist() for k, v in masks.items()}  # doctest: +NORMALIZE_WHITESPACE
        {'weekdays': [True, False, False, False, False],
         'pronoun_third_feminine': [False, False, True, True, False],
         'numeric': [False, False, False, False, True]}
    """
    tokenizer, d_vocab = _tokenizer_and_size(tokenizer, d_vocab)
    strings = vocab_strings(tokenizer, d_vocab)
    chosen: list[tuple[str, TokenPredicate]] = [
        (n, get_token_set(n).fn) for n in (list(_REGISTRY) if names is None else list(names))
    ]
    for name, fn in (extra or {}).items():
        chosen.append((name, fn))
    excluded = {i for i in _special_ids(tokenizer) if 0 <= i < len(strings)}
    live = [i for i, s in enumerate(strings) if s and i not in excluded]
    masks: dict[str, np.ndarray] = {}
    for name, fn in chosen:
        mask = np.zeros(len(strings), dtype=bool)
        hits = [i for i in live if fn(strings[i])]
        mask[hits] = True
        masks[name] = mask
    return masks


def token_set_frame(tokenizer: Any, names: Iterable[str] | None = None, **kwargs: Any) -> Any:
    """The masks as a pandas DataFrame, one row per token id (``token`` column + one per set).

    Examples:
        >>> token_set_frame([" 1999", "x"], names=["year"]).to_dict("list")
        {'token': [' 1999', 'x'], 'year': [True, False]}
    """
    import pandas as pd

    tok, d_vocab = _tokenizer_and_size(tokenizer, kwargs.pop("d_vocab", None))
    masks = token_set_masks(tok, names, d_vocab=d_vocab, **kwargs)
    return pd.DataFrame({"token": vocab_strings(tok, d_vocab), **masks})


# ---------------------------------------------------------------------------------------------
# The built-in sets. Each predicate sees the decoded token string; `_word` strips the leading
# whitespace so that " January" and "January" are both months.


def _word(s: str) -> str:
    return s.lstrip()


def _ascii_digits(w: str) -> bool:
    return w.isascii() and w.isdigit()


def _is_year(s: str) -> bool:
    w = _word(s)
    return len(w) == 4 and _ascii_digits(w) and w[0] != "0" and 1490 <= int(w) <= 2200


def _all_in(chars: str) -> TokenPredicate:
    allowed = set(chars)
    return lambda s: bool(_word(s)) and set(_word(s)) <= allowed


def _in_words(words: Iterable[str], *, case_sensitive: bool) -> TokenPredicate:
    words = list(words)
    if case_sensitive:
        vocab = frozenset(words)
    else:
        # As written or capitalised at a sentence start ("they", "They"), not shouted ("THEY",
        # more often an acronym such as "IT") and not lower-cased "i" (usually a word piece).
        vocab = frozenset(words) | frozenset(w[:1].upper() + w[1:] for w in words)
    return lambda s: _word(s) in vocab


def _register_builtins() -> None:
    punct = set(string.punctuation)
    builtins: list[tuple[str, TokenPredicate, str]] = [
        ("leading_space", lambda s: s.startswith(" ") and bool(s.strip()), "starts with a space"),
        (
            "capitalised",
            lambda s: bool(_word(s)) and _word(s)[0].isalpha() and _word(s)[0].isupper(),
            "first character is an upper-case letter",
        ),
        (
            "all_caps",
            lambda s: sum(c.isalpha() for c in _word(s)) >= 2 and _word(s).isupper(),
            "two or more letters, all upper case",
        ),
        (
            "lowercase_word",
            lambda s: _word(s).isalpha() and _word(s).islower(),
            "letters only, all lower case",
        ),
        ("numeric", lambda s: _ascii_digits(_word(s)), "ASCII digits only"),
        ("year", _is_year, "an integer from 1490 to 2200 (four digits, optional leading space)"),
        (
            "single_digit",
            lambda s: len(_word(s)) == 1 and _ascii_digits(_word(s)),
            "one ASCII digit",
        ),
        (
            "punctuation",
            lambda s: bool(_word(s)) and set(_word(s)) <= punct,
            "ASCII punctuation only",
        ),
        ("sentence_end", _all_in(".!?"), "made of . ! ? only"),
        ("comma", lambda s: _word(s) == ",", "a comma"),
        ("colon_semicolon", _all_in(":;"), "made of : and ; only"),
        ("quote", _all_in("\"'`"), "made of quote characters only"),
        ("dash", _all_in("-\u2013\u2014"), "made of hyphens/dashes only"),
        ("open_bracket", _all_in("([{<"), "made of opening brackets ( [ { < only"),
        ("close_bracket", _all_in(")]}>"), "made of closing brackets ) ] } > only"),
        ("whitespace", lambda s: bool(s) and not s.strip(), "whitespace only"),
        ("newline", lambda s: "\n" in s, "contains a newline"),
    ]
    for letter in string.ascii_lowercase:
        builtins.append(
            (
                f"first_letter_{letter}",
                # default argument binds this iteration's letter
                lambda s, c=letter: _word(s)[:1].lower() == c,
                f"first non-space character is {letter!r} or {letter.upper()!r}",
            )
        )
    for prefix in ("un", "re", "in", "dis", "en", "non", "pre", "pro", "over", "sub", "inter"):
        builtins.append(
            (
                f"prefix_{prefix}",
                # a whole word that begins with the prefix; the prefix alone ("in") is a word
                lambda s, p=prefix: (
                    _word(s).isalpha()
                    and len(_word(s)) >= len(p) + 2
                    and _word(s).lower().startswith(p)
                ),
                f"a word of 2+ letters after the prefix {prefix!r}",
            )
        )
    for suffix in ("ing", "ed", "ly", "tion", "er", "est", "ment", "ness", "able", "ful", "ity"):
        builtins.append(
            (
                f"suffix_{suffix}",
                # BPE spells suffixes as their own continuation tokens, so the bare suffix counts
                lambda s, x=suffix: _word(s).isalpha() and _word(s).lower().endswith(x),
                f"letters ending in {suffix!r} (the bare suffix included)",
            )
        )
    months = (
        "January February March April May June July August September October November December"
    ).split()
    weekdays = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
    # Case-sensitive: "may" and "march" are usually not months.
    builtins.append(("months", _in_words(months, case_sensitive=True), "capitalised month name"))
    builtins.append(("weekdays", _in_words(weekdays, case_sensitive=True), "capitalised day name"))
    pronouns = {
        "first_singular": "I me my mine myself",
        "first_plural": "we us our ours ourselves",
        "second": "you your yours yourself yourselves",
        "third_masculine": "he him his himself",
        "third_feminine": "she her hers herself",
        "third_neuter": "it its itself",
        "third_plural": "they them their theirs themselves",
    }
    for cls, words in pronouns.items():
        builtins.append(
            (
                f"pronoun_{cls}",
                _in_words(words.split(), case_sensitive=False),
                f"pronoun ({cls.replace('_', ' ')}): {words.replace(' ', ', ')}",
            )
        )
    everything = " ".join(pronouns.values()).split()
    builtins.append(
        ("pronoun", _in_words(everything, case_sensitive=False), "any personal pronoun above")
    )
    for name, fn, description in builtins:
        register_token_set(name, fn, description=description)


_register_builtins()

BUILTIN_TOKEN_SETS: tuple[str, ...] = tuple(_REGISTRY)
"""Names of the sets defined here (users' sets come after them in the registry)."""


def masks_matrix(
    masks: dict[str, Bool[np.ndarray, " d_vocab"]] | Sequence[Bool[np.ndarray, " d_vocab"]],
) -> Bool[np.ndarray, "sets d_vocab"]:
    """Stack masks into a ``[sets, d_vocab]`` array (dict order).

    Examples:
        >>> masks_matrix({"a": np.array([True, False]), "b": np.array([False, False])}).shape
        (2, 2)
    """
    values = list(masks.values()) if isinstance(masks, dict) else list(masks)
    return np.stack([np.asarray(m, dtype=bool) for m in values])
