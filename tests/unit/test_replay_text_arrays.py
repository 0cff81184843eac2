"""The replay's saving connection dumps lists of strings as ``text[]`` literals itself
(services/replay/run.py, ``_TextArrayDumper``): psycopg's own text-array loader reads every
one back as written."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import postgres
from psycopg.adapt import Transformer
from psycopg.pq import Format

from services.replay.run import _TextArrayDumper

TEXTS = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))


@given(st.lists(TEXTS))
def test_text_arrays_read_back_as_written(items: list[str]) -> None:
    literal = _TextArrayDumper(list).dump(items)
    loader = Transformer().get_loader(postgres.types["text"].array_oid, Format.TEXT)
    assert loader.load(literal) == items


@pytest.mark.parametrize("items", [["NULL"], ['a"b', "c\\d", "{e,f}", " g ", ""], []])
def test_awkward_strings(items: list[str]) -> None:
    loader = Transformer().get_loader(postgres.types["text"].array_oid, Format.TEXT)
    assert loader.load(_TextArrayDumper(list).dump(items)) == items


def test_lists_of_anything_else_are_refused() -> None:
    with pytest.raises(TypeError):
        _TextArrayDumper(list).dump(["a", 1])
