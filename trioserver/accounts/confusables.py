"""Look-alike names: a UTS #39-style skeleton, so ``аdmin`` (Cyrillic а) is ``admin``.

UTS #39 defines ``skeleton(X)``: NFD, map each character by the confusables
table, NFD again; two strings are confusable when their skeletons are equal.
The full table (about 6,000 entries, ``confusables.txt``) is not in the standard
library, so this module carries a small, honest subset: the Cyrillic, Greek and
a few other letters that render like basic Latin letters in common fonts. It
catches the usual impersonation (a Latin name spelled with Cyrillic look-alikes)
and misses rarer scripts; it never maps ASCII to anything else, so ASCII names
are their own skeletons. Applied to a name key (already case-folded).
"""

from __future__ import annotations

import unicodedata
from typing import Final

__all__ = ["skeleton"]

# Lower case only: skeletons are taken of case-folded keys.
_TABLE: Final = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j",
        "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y",
        "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "ɡ": "g", "ь": "b",
        # Greek
        "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
        "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j",
        # Latin look-alikes outside ASCII
        "ı": "i", "ȷ": "j", "ℓ": "l", "ſ": "s",
    }
)  # fmt: skip


def skeleton(key: str) -> str:
    """The skeleton of a case-folded name key (ASCII keys are their own)."""
    if key.isascii():
        return key
    mapped = unicodedata.normalize("NFD", key).translate(_TABLE)
    return unicodedata.normalize("NFC", mapped)
