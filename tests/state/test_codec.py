"""Record encodings: doubles come back bit for bit, watermarks and headers intact, corrupt bytes refused."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_online.feedback import loadgen
from aegis_online.state import LearnerRecord
from aegis_online.state.codec import (
    CodecError,
    decode_learner,
    decode_prediction,
    encode_learner,
    encode_prediction,
    version_bytes,
)

any_double = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True, width=64)


def bits(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f8").tobytes()


@settings(max_examples=200, deadline=None)
@given(
    state=st.lists(any_double, min_size=0, max_size=120),
    updates=st.integers(min_value=0, max_value=2**63),
    marks=st.dictionaries(st.text(min_size=1, max_size=40), st.integers(min_value=-1, max_value=2**62), max_size=8),
)
def test_a_learner_record_round_trips_bit_for_bit(state: list[float], updates: int, marks: dict[str, int]) -> None:
    record = LearnerRecord(state=np.array(state, dtype=np.float64), updates=updates, marks=marks)
    back = decode_learner(encode_learner(record))
    assert bits(back.state) == bits(record.state)  # NaN payloads, -0.0, subnormals and infinities included
    assert back.updates == updates and dict(back.marks) == marks


def test_the_extreme_doubles_survive_where_a_decimal_text_form_would_not() -> None:
    values = np.array([0.1, 1 / 3, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931308623157e308, math.pi])
    back = decode_learner(encode_learner(LearnerRecord(state=values)))
    assert bits(back.state) == bits(values)
    assert float(f"{1 / 3:.14g}") != 1 / 3  # what Lua's tostring() would have kept: field notes, section 4


def test_a_record_starts_with_its_version_the_update_count_big_endian() -> None:
    blob = encode_learner(LearnerRecord(state=np.zeros(3), updates=258))
    assert blob[:8] == version_bytes(258) == (258).to_bytes(8, "big")


def test_a_prediction_record_round_trips_with_asleep_experts_and_propensities() -> None:
    record = loadgen.predictions(1, ["acme"], ["a", "b", "c"], np.random.default_rng(3), asleep=0.3)[0]
    record = record.__class__(**{**record.__dict__, "propensities": np.array([0.5, 1.0, 0.25])})
    back = decode_prediction(encode_prediction(record))
    assert (back.request_id, back.tenant, back.check, back.created) == (
        record.request_id,
        record.tenant,
        record.check,
        record.created,
    )
    assert back.experts == record.experts and back.categories == record.categories and back.flagged == record.flagged
    assert bits(back.outputs) == bits(record.outputs) and np.isnan(back.outputs).any()
    assert bits(back.scores) == bits(record.scores) and bits(back.propensities) == bits(record.propensities)


@pytest.mark.parametrize("cut", [0, 5, 20, 200])
def test_truncated_or_foreign_bytes_are_refused(cut: int) -> None:
    record = loadgen.predictions(1, ["acme"], ["a", "b"], np.random.default_rng(0))[0]
    with pytest.raises(CodecError):
        decode_prediction(encode_prediction(record)[:cut])
    with pytest.raises(CodecError):
        decode_learner(struct.pack(">QBHH", 1, 9, 0, 0))  # an unknown format


def test_a_prediction_record_keeps_its_input_digest() -> None:
    record = loadgen.predictions(1, ["acme"], ["a", "b"], np.random.default_rng(4))[0]
    record = record.__class__(**{**record.__dict__, "input_digest": "sha256:" + "ab" * 32})
    blob = encode_prediction(record)
    assert blob[1] == 2  # format 2
    assert decode_prediction(blob).input_digest == record.input_digest


def test_a_format_1_prediction_record_is_still_read_with_an_empty_digest() -> None:
    """Records logged before the upgrade are read until their TTL ends (format 1: six strings, no digest)."""
    record = loadgen.predictions(1, ["acme"], ["a", "b"], np.random.default_rng(5))[0]
    strings = [
        s.encode()
        for s in (
            record.request_id,
            record.tenant,
            record.check,
            "\x1f".join(record.experts),
            "\x1f".join(record.categories),
            "\x1f".join(record.flagged),
        )
    ]
    head = struct.pack(
        "<cB?dHH6H", b"P", 1, False, record.created, len(record.categories), 2, *(len(s) for s in strings)
    )
    old = head + b"".join(strings) + record.outputs.astype("<f8").tobytes() + record.scores.astype("<f8").tobytes()
    back = decode_prediction(old)
    assert back.input_digest == "" and back.request_id == record.request_id and back.flagged == record.flagged
    assert bits(back.outputs) == bits(record.outputs) and bits(back.scores) == bits(record.scores)
    assert decode_prediction(encode_prediction(back)).input_digest == ""  # and written again as format 2
