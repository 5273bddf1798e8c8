"""The ASCII fast path of the input rules decides exactly as the per-character rule does."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from trioserver.accounts.names import _NAME_FORBIDDEN, _PASSWORD_FORBIDDEN, _has, name_key


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_fast_path_matches_the_category_rule(text: str) -> None:
    for forbidden in (_NAME_FORBIDDEN, _PASSWORD_FORBIDDEN):
        slow = any(unicodedata.category(c) in forbidden for c in text)
        assert _has(text, forbidden) == slow


@given(st.text(alphabet=st.characters(max_codepoint=127), min_size=1))
def test_ascii_name_key_matches_casefold_nfc(name: str) -> None:
    assert name_key(name) == unicodedata.normalize("NFC", name.casefold())
