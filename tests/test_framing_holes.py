"""Wire parsers say where samples were lost, read CR-only lines, and name decimal commas."""

from __future__ import annotations

import numpy as np

from edge_agent.sources.framing import BinaryFrameParser, CsvLineParser, encode_frame

CH = ("a", "b", "c")


def test_cr_only_line_endings_are_lines() -> None:
    p = CsvLineParser(CH)
    out = p.feed(b"1.0,2.0,3.0\r4.0,5.0,6.0\r7.0,8.0")
    assert out.samples.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert not out.errors
    assert p.feed(b",9.0\r\n").samples.tolist() == [[7, 8, 9]]  # CR LF is one ending


def test_decimal_comma_lines_are_named() -> None:
    p = CsvLineParser(CH)
    out = p.feed(b"3,14;2,71;1,00\n3,14 2,71 1,00\n1.0,2.0,3.0\n1,2\n")
    assert out.errors["decimal_comma_lines"] == 2
    assert out.errors["bad_lines"] == 3  # "1,2" is short, not a decimal comma
    two = CsvLineParser(("x", "y"))
    assert two.feed(b"3,14,2,71\n").errors["decimal_comma_lines"] == 1  # twice the fields


def test_rejected_lines_are_a_break_before_the_next_sample() -> None:
    p = CsvLineParser(CH)
    out = p.feed(b"1,2,3\n4,5\n\xff,1,1\n7,8,9\n")
    assert out.samples.tolist() == [[1, 2, 3], [7, 8, 9]]
    assert out.breaks == [(1, 2)]  # two lines (samples) lost before row 1
    out = p.feed(b"bad\n")
    assert out.breaks == []
    assert len(out.samples) == 0
    out = p.feed(b"1,1,1\n")
    assert out.breaks == [(0, 1)]  # carried over to the next feed's first sample


def test_frame_counter_gap_is_a_break_with_the_samples_lost() -> None:
    x = np.ones((4, 3))
    wire = (
        encode_frame(x, frame_seq=1) + encode_frame(x, frame_seq=4) + encode_frame(x, frame_seq=5)
    )
    out = BinaryFrameParser(3).feed(wire)
    assert len(out.samples) == 12
    assert out.breaks == [(4, 8)]  # frames 2 and 3 (4 samples each) lost before row 4
    assert out.errors["lost_frames"] == 2
