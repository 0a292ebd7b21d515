"""Wire-format parsers: exact decoding, resync after damage, and fuzzing."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.sources.framing import (
    BinaryFrameParser,
    CsvLineParser,
    KeyValueLineParser,
    SampleType,
    crc16_ccitt_false,
    encode_frame,
)

# The worked example in docs/serial-protocol.md; firmware authors check against it.
DOC_FRAME = bytes.fromhex(
    "a55a01 1000 01 0200 02 0700 0000803f 000000c0 0000003f 00005040 0e6b".replace(" ", "")
)


def _bitwise_crc(data: bytes) -> int:
    """Textbook shift-register CRC-16/CCITT-FALSE, independent of the table/C version."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def test_crc16_ccitt_false_check_value() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1 == _bitwise_crc(b"123456789")
    assert _bitwise_crc(DOC_FRAME[2:-2]) == 0x6B0E


def test_documented_example_frame_decodes() -> None:
    samples = np.array([[1.0, -2.0], [0.5, 3.25]])
    assert encode_frame(samples, frame_seq=7) == DOC_FRAME
    out = BinaryFrameParser(2).feed(DOC_FRAME)
    assert out.frames == 1
    assert not out.errors
    np.testing.assert_array_equal(out.samples, samples.astype(np.float32))


def test_int16_frames_are_scaled() -> None:
    frame = encode_frame([[1.5, -0.25]], sample_type=SampleType.INT16, scale=0.01)
    out = BinaryFrameParser(2, scale=0.01).feed(frame)
    np.testing.assert_allclose(out.samples, [[1.5, -0.25]], rtol=1e-6)


def test_frame_split_at_every_byte_is_reassembled() -> None:
    frame = encode_frame(np.arange(12.0).reshape(4, 3))
    for cut in range(1, len(frame)):
        p = BinaryFrameParser(3)
        a, b = p.feed(frame[:cut]), p.feed(frame[cut:])
        assert a.frames + b.frames == 1, cut
        assert not a.errors, cut
        assert not b.errors, cut


def test_garbage_and_partial_frame_then_resync() -> None:
    good = [encode_frame(np.full((2, 2), float(i)), frame_seq=i) for i in range(3)]
    stream = b"\x00\xa5\xffnoise" + good[0] + good[1][:9] + good[2]
    out = BinaryFrameParser(2).feed(stream)
    # frame 1 was cut mid-header: it is lost, counted, and frame 2 still decodes
    np.testing.assert_array_equal(out.samples[:, 0], [0, 0, 2, 2])
    assert out.errors["garbage_bytes"] > 0
    assert out.errors["lost_frames"] == 1


def test_crc_error_is_counted_and_frame_dropped() -> None:
    bad = bytearray(encode_frame(np.ones((2, 2)), frame_seq=0))
    bad[14] ^= 0x40  # one flipped payload bit
    good = encode_frame(np.zeros((2, 2)), frame_seq=1)
    out = BinaryFrameParser(2).feed(bytes(bad) + good)
    assert out.frames == 1
    assert out.errors["crc_errors"] == 1
    np.testing.assert_array_equal(out.samples, np.zeros((2, 2)))


def test_oversized_length_is_not_waited_for() -> None:
    # a header claiming 60000 bytes must not make the parser buffer 60 kB of "payload"
    fake = bytes.fromhex("a55a01") + (60000).to_bytes(2, "little") + bytes([1, 0x60, 0xEA, 1])
    good = encode_frame(np.ones((1, 1)))
    p = BinaryFrameParser(1)
    out = p.feed(fake + b"\x00\x00" + good)
    assert out.frames == 1
    assert out.errors["oversized_frames"] == 1
    assert p.buffered == 0


def test_wrong_channel_count_is_counted() -> None:
    out = BinaryFrameParser(3).feed(encode_frame(np.ones((2, 2))))
    assert out.frames == 0
    assert out.errors["channel_mismatch"] == 1


def test_csv_lines() -> None:
    p = CsvLineParser(("a", "b"))
    out = p.feed(b"# board v2\r\n1.5,2\r\n3,oops\n4\n5,6")
    assert out.samples.shape == (2, 2)
    assert out.samples[0].tolist() == [1.5, 2.0]
    assert math.isnan(out.samples[1, 1])
    assert out.errors == {"bad_values": 1, "bad_lines": 1}
    assert p.feed(b"\n").samples.tolist() == [[5.0, 6.0]]


def test_csv_overlong_line_dropped_until_newline() -> None:
    p = CsvLineParser(("a",), max_line=16)
    out = p.feed(b"9" * 40)
    out2 = p.feed(b"999\n7\n")
    assert out.errors["oversized_lines"] == 1
    assert out2.samples.tolist() == [[7.0]]


def test_key_value_lines() -> None:
    p = KeyValueLineParser(("temp", "rpm"))
    out = p.feed(b"temp=21.5 rpm=1200\nrpm=1300;typo=1\ngarbage\n")
    assert out.samples[0].tolist() == [21.5, 1200.0]
    assert math.isnan(out.samples[1, 0])
    assert out.samples[1, 1] == 1300.0
    assert out.errors == {"unknown_keys": 1, "missing_values": 1, "bad_lines": 1}


_frames = st.lists(
    st.tuples(
        st.integers(1, 6),
        st.integers(1, 4),
        st.sampled_from([SampleType.FLOAT32, SampleType.INT16]),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), chunk=st.integers(1, 64))
def test_arbitrary_bytes_never_raise(data: bytes, chunk: int) -> None:
    for parser in (BinaryFrameParser(2), CsvLineParser(("a", "b")), KeyValueLineParser(("a",))):
        n = 0
        for i in range(0, len(data), chunk):
            out = parser.feed(data[i : i + chunk])
            assert out.samples.dtype == np.float32
            assert out.samples.shape[1] == (1 if isinstance(parser, KeyValueLineParser) else 2)
            n += len(out.samples)
        parser.flush()
        assert n >= 0


def _cut_frame(n: int, cut: int) -> bytes:
    """The start of a real 3-channel frame, as a board reset mid-frame leaves it."""
    frame = encode_frame(np.full((n, 3), 7.0), frame_seq=999)
    return frame[: cut % len(frame)]


# garbage that looks like frames: random bytes, cut frames, bare sync pairs
_garbage = st.one_of(
    st.binary(max_size=80),
    st.builds(_cut_frame, st.integers(1, 5), st.integers(0, 200)),
    st.builds(lambda b: b"\xa5\x5a" + b, st.binary(max_size=12)),
)


@settings(max_examples=300, deadline=None)
@given(
    garbage=st.lists(_garbage, min_size=4, max_size=8),
    n_frames=st.integers(1, 3),
    n_samples=st.integers(1, 5),
    stype=st.sampled_from([SampleType.FLOAT32, SampleType.INT16]),
    chunk=st.integers(1, 97),
)
def test_valid_frames_in_garbage_are_all_recovered(
    garbage: list[bytes], n_frames: int, n_samples: int, stype: SampleType, chunk: int
) -> None:
    ch = 3
    rng = np.random.default_rng(n_frames * 100 + n_samples)
    blocks = [np.round(rng.normal(size=(n_samples, ch)) * 100) for _ in range(n_frames)]
    stream = garbage[0]
    for i, blk in enumerate(blocks):
        stream += encode_frame(blk, sample_type=stype, frame_seq=i) + garbage[i + 1]
    p = BinaryFrameParser(ch)
    got = [p.feed(stream[i : i + chunk]).samples for i in range(0, len(stream), chunk)]
    got.append(p.flush().samples)
    recovered = np.concatenate(got)
    want = np.concatenate(blocks).astype(np.float32)
    # every sent sample appears, in order (garbage could in theory hold extra frames)
    rows = [tuple(r) for r in recovered]
    it = iter(rows)
    assert all(any(r == tuple(w) for r in it) for w in want)
