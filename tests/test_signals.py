"""Tests for feedback.signals: normalisation of feedback to [0, 1], error messages, and combine()."""

from __future__ import annotations

import ast
import dataclasses
import math
import pickle
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import feedback
from feedback.signals import (
    FeedbackSignal,
    SignalError,
    combine,
    from_grader,
    from_score,
    from_stars,
    from_ten_point,
    from_thumbs,
    parse_feedback,
)

NAN, INF = float("nan"), float("inf")
unit = st.floats(min_value=0.0, max_value=1.0)
weights = st.floats(min_value=1e-6, max_value=1e6)


def raises_on(field: str):
    """pytest.raises(SignalError) whose message must start with the field name."""
    return pytest.raises(SignalError, match=r"^" + field.replace(".", r"\.").replace("[", r"\[") + ": ")


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize(
    ("signal", "quality", "kind", "source"),
    [
        (from_score(0.0), 0.0, "score", "user"),
        (from_score(0.73), 0.73, "score", "user"),
        (from_score(1), 1.0, "score", "user"),
        (from_score(Fraction(1, 4), source="judge"), 0.25, "score", "judge"),
        (from_thumbs("up"), 1.0, "thumbs", "user"),
        (from_thumbs("down"), 0.0, "thumbs", "user"),
        (from_thumbs(True), 1.0, "thumbs", "user"),
        (from_thumbs(False), 0.0, "thumbs", "user"),
        (from_thumbs("thumbs_up"), 1.0, "thumbs", "user"),
        (from_thumbs("thumbs_down"), 0.0, "thumbs", "user"),
        (from_thumbs("\N{THUMBS UP SIGN}"), 1.0, "thumbs", "user"),
        (from_thumbs("\N{THUMBS DOWN SIGN}"), 0.0, "thumbs", "user"),
        (from_stars(1), 0.0, "stars", "user"),
        (from_stars(2), 0.25, "stars", "user"),
        (from_stars(3), 0.5, "stars", "user"),
        (from_stars(5), 1.0, "stars", "user"),
        (from_stars(4.0), 0.75, "stars", "user"),
        (from_ten_point(0), 0.0, "ten_point", "user"),
        (from_ten_point(7), 0.7, "ten_point", "user"),
        (from_ten_point(7.5), 0.75, "ten_point", "user"),
        (from_ten_point(10), 1.0, "ten_point", "user"),
        (from_grader("exact_match", passed=True), 1.0, "grader_pass", "grader:exact_match"),
        (from_grader("exact_match", passed=False), 0.0, "grader_pass", "grader:exact_match"),
        (from_grader("rubric", score=7, max=10), 0.7, "grader_score", "grader:rubric"),
        (from_grader("rubric", score=0, max=3), 0.0, "grader_score", "grader:rubric"),
        (from_grader("rubric", score=2.5, max=2.5), 1.0, "grader_score", "grader:rubric"),
    ],
)
def test_examples(signal, quality, kind, source):
    assert signal.quality == pytest.approx(quality)
    assert type(signal.quality) is float
    assert (signal.kind, signal.source, signal.weight) == (kind, source, 1.0)


def test_source_keyword_and_weight_via_replace():
    sig = from_stars(4, source="admin")
    assert sig.source == "admin"
    heavy = dataclasses.replace(sig, weight=3)
    assert heavy.weight == 3.0 and heavy.quality == 0.75
    with pytest.raises(dataclasses.FrozenInstanceError):
        sig.quality = 0.1  # type: ignore[misc]


def test_negative_zero_is_normalised():
    assert math.copysign(1.0, from_score(-0.0).quality) == 1.0


@pytest.mark.parametrize(
    ("payload", "quality", "kind", "source"),
    [
        ({"score": 0.4}, 0.4, "score", "user"),
        ({"score": 1, "event_id": "e-1"}, 1.0, "score", "user"),
        ({"rating": "up"}, 1.0, "thumbs", "user"),
        ({"rating": "down", "source": "mobile"}, 0.0, "thumbs", "mobile"),
        ({"rating": {"thumbs": "up"}}, 1.0, "thumbs", "user"),
        ({"rating": {"stars": 4}}, 0.75, "stars", "user"),
        ({"rating": {"scale": 10, "value": 6}}, 0.6, "ten_point", "user"),
        ({"rating": {"scale": 10.0, "value": 6.5}}, 0.65, "ten_point", "user"),
        ({"rating": {"ten": 9}}, 0.9, "ten_point", "user"),
        ({"grader": {"name": "exact", "passed": True}}, 1.0, "grader_pass", "grader:exact"),
        ({"grader": {"name": "rubric", "score": 3, "max": 4}}, 0.75, "grader_score", "grader:rubric"),
        ({"grader": {"name": "rubric", "passed": False}, "source": "ci"}, 0.0, "grader_pass", "ci"),
        ({"score": 0.5, "source": None}, 0.5, "score", "user"),
    ],
)
def test_parse_feedback_examples(payload, quality, kind, source):
    sig = parse_feedback(payload)
    assert sig.quality == pytest.approx(quality)
    assert (sig.kind, sig.source) == (kind, source)


def test_package_reexports():
    assert feedback.parse_feedback is parse_feedback
    assert feedback.combine is combine
    assert set(feedback.__all__) <= set(dir(feedback))


def test_module_is_standalone():
    """feedback/ imports only the stdlib (and nothing from bandit_router, nothing that does I/O)."""
    allowed = {"__future__", "math", "numbers", "collections", "dataclasses", "typing", "feedback"}
    for path in Path(feedback.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots - allowed}"


# ---------------------------------------------------------------- errors


def test_signal_error_shape():
    with raises_on("rating.stars") as info:
        parse_feedback({"rating": {"stars": 6}})
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == "rating.stars"
    assert str(err) == "rating.stars: 6 is out of range 1..5"
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), copy.field, str(copy)) == (SignalError, "rating.stars", str(err))


@pytest.mark.parametrize(
    ("call", "field", "fragment"),
    [
        (lambda: from_score(NAN), "score", "nan is not a finite number"),
        (lambda: from_score(INF), "score", "inf is not a finite number"),
        (lambda: from_score(1.5), "score", "out of range 0..1"),
        (lambda: from_score(-0.1), "score", "out of range 0..1"),
        (lambda: from_score(True), "score", "expected a number, got bool"),
        (lambda: from_score("0.5"), "score", "expected a number, got str"),
        (lambda: from_score(None), "score", "expected a number, got NoneType"),
        (lambda: from_score(10**400), "score", "not a finite number"),
        (lambda: from_score(0.5, source=""), "source", "non-empty string"),
        (lambda: from_score(0.5, source="   "), "source", "non-empty string"),
        (lambda: from_score(0.5, source="x" * 101), "source", "at most 100 characters"),
        (lambda: from_score(0.5, source=7), "source", "non-empty string"),
        (lambda: from_thumbs("UP"), "thumbs", "not a thumbs value"),
        (lambda: from_thumbs("sideways"), "thumbs", "not a thumbs value"),
        (lambda: from_thumbs(1), "thumbs", "not a thumbs value"),
        (lambda: from_thumbs(None), "thumbs", "not a thumbs value"),
        (lambda: from_stars(6), "stars", "6 is out of range 1..5"),
        (lambda: from_stars(0), "stars", "0 is out of range 1..5"),
        (lambda: from_stars(3.5), "stars", "3.5 is not a whole number"),
        (lambda: from_stars(True), "stars", "expected a number, got bool"),
        (lambda: from_stars("4"), "stars", "expected a number, got str"),
        (lambda: from_stars(NAN), "stars", "not a finite number"),
        (lambda: from_ten_point(11), "ten_point", "11 is out of range 0..10"),
        (lambda: from_ten_point(-1), "ten_point", "out of range 0..10"),
        (lambda: from_ten_point(-INF), "ten_point", "not a finite number"),
        (lambda: from_ten_point(False), "ten_point", "expected a number, got bool"),
        (lambda: from_grader("", passed=True), "grader.name", "non-empty string"),
        (lambda: from_grader(3, passed=True), "grader.name", "non-empty string"),
        (lambda: from_grader("g" * 94, passed=True), "grader.name", "at most 93 characters"),
        (lambda: from_grader("g"), "grader", "one of passed or score+max is required"),
        (lambda: from_grader("g", passed=True, score=1, max=2), "grader", "not both"),
        (lambda: from_grader("g", passed=1), "grader.passed", "expected a bool"),
        (lambda: from_grader("g", passed="yes"), "grader.passed", "expected a bool"),
        (lambda: from_grader("g", score=1), "grader.max", "required when score is given"),
        (lambda: from_grader("g", max=1), "grader.score", "required when max is given"),
        (lambda: from_grader("g", score=-1, max=10), "grader.score", "-1 must be between 0 and max (10)"),
        (lambda: from_grader("g", score=11, max=10), "grader.score", "11 must be between 0 and max (10)"),
        (lambda: from_grader("g", score=NAN, max=10), "grader.score", "nan is not a finite number"),
        (lambda: from_grader("g", score=True, max=10), "grader.score", "expected a number, got bool"),
        (lambda: from_grader("g", score=0, max=0), "grader.max", "0 must be > 0"),
        (lambda: from_grader("g", score=0, max=-2), "grader.max", "-2 must be > 0"),
        (lambda: from_grader("g", score=0, max=INF), "grader.max", "not a finite number"),
        (lambda: from_grader("g", score=1, max="10"), "grader.max", "expected a number, got str"),
        (lambda: FeedbackSignal(1.2, "user", "score"), "quality", "out of range 0..1"),
        (lambda: FeedbackSignal(0.5, "user", "vibes"), "kind", "not one of"),
        (lambda: FeedbackSignal(0.5, "user", "score", weight=0), "weight", "must be > 0"),
        (lambda: FeedbackSignal(0.5, "user", "score", weight=NAN), "weight", "not a finite number"),
        (lambda: combine([]), "signals", "empty"),
        (lambda: combine(iter(())), "signals", "empty"),
        (lambda: combine([from_score(0.5), 0.5]), "signals[1]", "expected a FeedbackSignal"),
    ],
)
def test_function_errors_name_the_field(call, field, fragment):
    with raises_on(field) as info:
        call()
    assert info.value.field == field
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("payload", "field", "fragment"),
    [
        ("score=0.5", "payload", "expected an object"),
        ({}, "payload", "exactly one of score, rating, grader; got none"),
        ({"event_id": "e"}, "payload", "got none"),
        ({"score": 0.5, "rating": "up"}, "payload", "got score, rating"),
        ({"score": 1, "rating": "up", "grader": {}}, "payload", "got score, rating, grader"),
        ({"score": 0.5, "comment": "nice"}, "comment", "unknown key"),
        ({"score": 0.5, 3: "x"}, "3", "unknown key"),
        ({"score": NAN}, "score", "nan is not a finite number"),
        ({"score": 2}, "score", "out of range 0..1"),
        ({"score": "0.5"}, "score", "expected a number"),
        ({"score": 0.5, "source": ""}, "source", "non-empty string"),
        ({"score": 0.5, "source": "s" * 101}, "source", "at most 100"),
        ({"rating": "meh"}, "rating", "not a thumbs value"),
        ({"rating": 4}, "rating", "expected 'up', 'down' or an object"),
        ({"rating": None}, "rating", "expected 'up', 'down' or an object"),
        ({"rating": {}}, "rating", "exactly one of thumbs, stars, scale+value, ten; got none"),
        ({"rating": {"stars": 3, "ten": 5}}, "rating", "got stars, ten"),
        ({"rating": {"stars": 3, "colour": "red"}}, "rating.colour", "unknown key"),
        ({"rating": {"thumbs": "left"}}, "rating.thumbs", "not a thumbs value"),
        ({"rating": {"stars": 6}}, "rating.stars", "6 is out of range 1..5"),
        ({"rating": {"stars": 3.5}}, "rating.stars", "not a whole number"),
        ({"rating": {"stars": True}}, "rating.stars", "got bool"),
        ({"rating": {"stars": "5"}}, "rating.stars", "got str"),
        ({"rating": {"ten": 10.5}}, "rating.ten", "out of range 0..10"),
        ({"rating": {"scale": 10, "value": 12}}, "rating.value", "12 is out of range 0..10"),
        ({"rating": {"scale": 5, "value": 3}}, "rating.scale", "5 is not supported (only 10)"),
        ({"rating": {"scale": "10", "value": 3}}, "rating.scale", "expected a number"),
        ({"rating": {"value": 3}}, "rating.scale", "is required"),
        ({"rating": {"scale": 10}}, "rating.value", "is required"),
        ({"grader": "exact"}, "grader", "expected an object"),
        ({"grader": {"passed": True}}, "grader.name", "is required"),
        ({"grader": {"name": "", "passed": True}}, "grader.name", "non-empty string"),
        ({"grader": {"name": "g", "passed": True, "why": "x"}}, "grader.why", "unknown key"),
        ({"grader": {"name": "g"}}, "grader", "one of passed or score+max is required"),
        ({"grader": {"name": "g", "passed": None}}, "grader.passed", "expected a bool"),
        ({"grader": {"name": "g", "passed": "true"}}, "grader.passed", "expected a bool"),
        ({"grader": {"name": "g", "passed": True, "score": 1}}, "grader", "not both"),
        ({"grader": {"name": "g", "score": 1}}, "grader.max", "is required"),
        ({"grader": {"name": "g", "max": 1}}, "grader.score", "is required"),
        ({"grader": {"name": "g", "score": None, "max": 5}}, "grader.score", "expected a number"),
        ({"grader": {"name": "g", "score": -1, "max": 10}}, "grader.score", "between 0 and max (10)"),
        ({"grader": {"name": "g", "score": 1, "max": 0}}, "grader.max", "must be > 0"),
        ({"grader": {"name": "g", "passed": True}, "source": " "}, "source", "non-empty string"),
    ],
)
def test_parse_feedback_errors_name_the_field(payload, field, fragment):
    with raises_on(field) as info:
        parse_feedback(payload)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_error_messages_are_bounded():
    with raises_on("rating") as info:
        parse_feedback({"rating": "x" * 10_000})
    assert len(str(info.value)) < 200


# ---------------------------------------------------------------- combine examples


def test_combine_examples():
    assert combine([from_score(0.8)]) == 0.8
    assert combine([from_thumbs("up"), from_grader("exact", passed=False)]) == 0.5
    weighted = [dataclasses.replace(from_stars(5), weight=3.0), from_grader("g", passed=False)]
    assert combine(weighted) == pytest.approx(0.75)
    # the later signal from "user" replaces the earlier one entirely (including its weight)
    heavy_zero = dataclasses.replace(from_score(0.0), weight=100.0)
    sigs = [heavy_zero, from_score(1.0), from_grader("g", passed=False)]
    assert combine(sigs) == 0.5
    assert combine(s for s in [from_score(0.2), from_score(0.4, source="judge")]) == pytest.approx(0.3)


# ---------------------------------------------------------------- properties


sources = st.sampled_from(["user", "admin", "grader:exact", "grader:rubric", "judge"])


@st.composite
def valid_payloads(draw):
    kind = draw(st.sampled_from(["score", "thumbs", "rating_str", "stars", "scale", "ten", "pass", "graded"]))
    if kind == "score":
        payload = {"score": draw(unit | st.integers(0, 1))}
    elif kind == "rating_str":
        payload = {"rating": draw(st.sampled_from(["up", "down"]))}
    elif kind == "thumbs":
        payload = {"rating": {"thumbs": draw(st.sampled_from(["up", "down", True, False]))}}
    elif kind == "stars":
        payload = {"rating": {"stars": draw(st.integers(1, 5))}}
    elif kind == "scale":
        payload = {"rating": {"scale": 10, "value": draw(st.floats(0, 10) | st.integers(0, 10))}}
    elif kind == "ten":
        payload = {"rating": {"ten": draw(st.floats(0, 10))}}
    elif kind == "pass":
        payload = {"grader": {"name": "g", "passed": draw(st.booleans())}}
    else:
        m = draw(st.floats(min_value=1e-300, max_value=1e300) | st.integers(1, 10**6))
        s = draw(st.floats(0, 1)) * m
        payload = {"grader": {"name": "g", "score": min(s, m), "max": m}}
    if draw(st.booleans()):
        payload["source"] = draw(sources)
    return payload


@given(valid_payloads())
def test_valid_payload_maps_into_unit_interval(payload):
    q = parse_feedback(payload).quality
    assert 0.0 <= q <= 1.0


@given(st.floats(min_value=0, max_value=1e300, allow_subnormal=True), st.floats(0, 1))
def test_grader_score_into_unit_interval(m, frac):
    if m > 0:
        q = from_grader("g", score=m * frac, max=m).quality
        assert 0.0 <= q <= 1.0


@given(st.integers(1, 5), st.integers(1, 5))
def test_stars_monotone(a, b):
    if a <= b:
        assert from_stars(a).quality <= from_stars(b).quality
    if a < b:
        assert from_stars(a).quality < from_stars(b).quality


@given(st.floats(0, 10), st.floats(0, 10))
def test_ten_point_monotone(a, b):
    a, b = min(a, b), max(a, b)
    assert from_ten_point(a).quality <= from_ten_point(b).quality


not_finite = st.sampled_from([NAN, INF, -INF])


@given(st.integers().filter(lambda s: not 1 <= s <= 5) | not_finite | st.floats(1, 5).filter(lambda s: s % 1))
def test_stars_out_of_range_raise(value):
    with raises_on("rating.stars"):
        parse_feedback({"rating": {"stars": value}})


@given(st.floats(allow_nan=True).filter(lambda s: not 0 <= s <= 10) | st.integers().filter(lambda s: s > 10))
def test_ten_point_out_of_range_raise(value):
    with raises_on("ten_point"):
        from_ten_point(value)


@given(st.floats(allow_nan=True).filter(lambda s: not 0 <= s <= 1) | st.integers().filter(lambda s: s > 1))
def test_score_out_of_range_raise(value):
    with raises_on("score"):
        parse_feedback({"score": value})


@given(st.floats(1e-6, 1e6), st.floats(1.000001, 1e3) | st.floats(-1e6, -1e-9))
def test_grader_score_out_of_range_raise(m, factor):
    with raises_on("grader.score"):
        from_grader("g", score=m * factor, max=m)


kinds = st.sampled_from(["score", "grader_pass"])
signals = st.builds(FeedbackSignal, quality=unit, source=sources, kind=kinds, weight=weights)


@given(unit, st.lists(st.tuples(sources, weights), min_size=1, max_size=8))
def test_combine_identical_qualities(q, entries):
    assert combine(FeedbackSignal(q, src, "score", w) for src, w in entries) == q


@given(st.lists(signals, min_size=1, max_size=10))
def test_combine_between_min_and_max(sigs):
    last = {s.source: s for s in sigs}.values()
    result = combine(sigs)
    assert min(s.quality for s in last) <= result <= max(s.quality for s in last)


@given(st.lists(signals, min_size=1, max_size=10))
def test_combine_duplicates_use_last(sigs):
    last = {}
    for s in sigs:
        last[s.source] = s
    assert combine(sigs) == combine(list(last.values()))
    # the earlier duplicates are ignored entirely: changing them cannot change the result
    if len(last) < len(sigs):
        first = sigs[0]
        if any(s.source == first.source for s in sigs[1:]):
            flipped = dataclasses.replace(first, quality=1.0 - first.quality, weight=first.weight * 7)
            assert combine([flipped, *sigs[1:]]) == combine(sigs)


@given(st.lists(signals, min_size=1, max_size=10, unique_by=lambda s: s.source))
def test_combine_is_weighted_mean_of_distinct_sources(sigs):
    expected = sum(s.weight * s.quality for s in sigs) / sum(s.weight for s in sigs)
    assert combine(sigs) == pytest.approx(expected, rel=1e-9, abs=1e-12)
