"""The one table formatter (stitchkit.tables), in text and markdown, and threshold-titled columns."""

from stitchkit.tables import pair_columns, table

ROWS = [dict(a=1, b=0.123456789), dict(a=22, b=3.0)]
COLS = [("a", "A"), ("b", "bee")]


def test_text_and_markdown_show_the_same_cells():
    text = table(ROWS, COLS).splitlines()
    assert text == [" A     bee", "--  ------", " 1  0.1235", "22       3"]
    md = table(ROWS, COLS, "markdown").splitlines()
    assert md == ["| A | bee |", "|---|---|", "| 1 | 0.1235 |", "| 22 | 3 |"]
    assert table([dict(a=1)], COLS, "markdown").splitlines()[-1] == "| 1 |  |"  # a missing key prints empty


def test_pair_columns_name_the_threshold_used():
    assert ("novel", "novel (<= 0.65)") in pair_columns(0.65)
    assert ("novel", "novel (<= 0.7)") in pair_columns(0.7)
