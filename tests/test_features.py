"""Features (bandit_router.features) and category inference (bandit_router.categories)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit_router.categories import _SHORT, DEFAULT_CATEGORIES, DEFAULT_RULES, CategoryClassifier
from bandit_router.features import DIM, FEATURE_NAMES, HASHED_WORDS, N_DENSE, estimate_tokens, featurize

F = {name: i for i, name in enumerate(FEATURE_NAMES)}
# The hashed block is ±1 per word over ≤ HASHED_WORDS words, scaled by 0.25/√(words): at most
# 0.25·√32 ≈ 1.414 when every word lands in one bucket with one sign. Dense features are in [0, 1]
# except log_chars = log1p(chars)/10, which passes 1.5 only beyond ~3.3M characters.
HASH_BOUND = 0.25 * math.sqrt(HASHED_WORDS)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


SAMPLES = [
    user("What is 2+2?"),
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain TCP in one line."}],
    user("Écrivez une fonction Python qui trie une liste. 日本語のテキストも少し。"),
    user("```python\ndef f(x):\n    return x == 1;\n```\nWhy does this fail?"),
]


# ---------------------------------------------------------------- featurize


def test_shape_intercept_and_names():
    assert len(FEATURE_NAMES) == DIM == 32
    for m in SAMPLES:
        x = featurize(m)
        assert x.shape == (DIM,) and x.dtype == np.float64
        assert np.all(np.isfinite(x))
        assert x[0] == 1.0
        assert np.all(x[1:N_DENSE] >= 0) and np.all(x[1:N_DENSE] <= 1.0)


def test_an_empty_message_has_no_density():
    """Digits, operators and upper case are shares of an empty text: none (it once counted as full)."""
    F = {name: i for i, name in enumerate(FEATURE_NAMES)}
    for messages in ([], [{"role": "user", "content": ""}], [{"role": "user", "content": None}]):
        x = featurize(messages)
        assert x[F["digit_density"]] == x[F["math_density"]] == x[F["upper_share"]] == x[F["line_density"]] == 0.0
    x = featurize([{"role": "user", "content": "A1+\n"}])
    assert (x[F["digit_density"]], x[F["math_density"]], x[F["upper_share"]]) == (1.0, 1.0, 1.0)


def test_deterministic_within_a_process():
    for m in SAMPLES:
        np.testing.assert_array_equal(featurize(m), featurize(m))


@pytest.mark.parametrize("hashseed", ["1", "4242"])
def test_same_vector_in_a_fresh_interpreter_with_another_hash_seed(hashseed):
    code = ("import json, sys; from bandit_router.features import featurize; "
            "print(json.dumps([featurize(m).tolist() for m in json.loads(sys.stdin.read())]))")
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(SAMPLES), capture_output=True,
                         text=True, env=env, check=True, timeout=60)
    theirs = json.loads(out.stdout)
    for m, x in zip(SAMPLES, theirs, strict=True):
        assert featurize(m).tolist() == x  # bit for bit: CRC32, not the salted hash()
    assert any(abs(v) > 0 for v in theirs[0][N_DENSE:])  # the hashed block is not trivially zero


def test_hashed_block_reaches_but_never_exceeds_its_bound():
    x = featurize(user("spam " * 100))
    block = x[N_DENSE:]
    assert np.count_nonzero(block) == 1
    assert abs(block).max() == pytest.approx(HASH_BOUND, rel=1e-12)


def test_code_features():
    plain = featurize(user("Tell me about the history of Rome."))
    assert plain[F["code_present"]] == 0 and plain[F["code_ask"]] == 0
    code = featurize(user("```\nimport os\ndef main():\n    return os.getcwd()\n```"))
    assert code[F["code_present"]] >= 0.4  # fence ×2, import, def, return
    ask = featurize(user("Write a python function to implement a regex matcher."))
    assert ask[F["code_ask"]] == 1.0  # python, function, implement (capped at 3)


def test_multiple_choice_and_blank():
    mc = featurize(user("Which gas do plants absorb?\nA) Oxygen\nB) Carbon dioxide\nC) Helium\nD) Argon"))
    assert mc[F["mc_options"]] == pytest.approx(4 / 5)
    assert mc[F["question"]] == 1.0
    no_mc = featurize(user("Which gas do plants absorb?"))
    assert no_mc[F["mc_options"]] == 0.0
    blank = featurize(user("The trophy does not fit in the suitcase because _ is too big."))
    assert blank[F["blank"]] == 1.0
    for text in ("snake_case_name is a variable", "__init__ runs first", "no blank here"):
        assert featurize(user(text))[F["blank"]] == 0.0, text


def test_script_features():
    x = featurize(user("日本語の文章です"))
    assert x[F["cjk"]] == pytest.approx(1 / 3)  # 3 UTF-8 bytes per CJK character
    assert x[F["non_ascii"]] == pytest.approx(2 / 3)
    y = featurize(user("Привет мир"))
    assert y[F["other_script"]] > 0.4 and y[F["cjk"]] == 0.0


def test_only_the_last_user_message_drives_lexical_features():
    m = [{"role": "user", "content": "Write a python function."},
         {"role": "assistant", "content": "def f(): return 1"},
         {"role": "user", "content": "Thanks, what is the capital of France?"}]
    x = featurize(m)
    assert x[F["code_ask"]] == 0.0 and x[F["code_present"]] == 0.0
    assert x[F["turns"]] == pytest.approx(3 / 20)


text = st.text(max_size=300)
part = st.one_of(text, st.fixed_dictionaries({"type": st.just("text"), "text": text}),
                 st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.just({"url": "x"})}),
                 st.none(), st.integers())
content = st.one_of(text, st.none(), st.lists(part, max_size=4), st.integers(), st.just(""))
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool"]), "content": content}),
    st.fixed_dictionaries({"content": content}),  # no role: treated as the user
    st.fixed_dictionaries({"role": st.none(), "content": content}),
    st.fixed_dictionaries({"role": st.just("user")}),  # no content
)


@settings(max_examples=150, deadline=None)
@given(st.lists(message, max_size=5))
def test_arbitrary_messages_never_raise_and_stay_bounded(messages):
    x = featurize(messages)
    assert x.shape == (DIM,)
    assert np.all(np.isfinite(x))
    assert x[0] == 1.0
    assert np.all(x[1:N_DENSE] >= 0.0) and np.all(x[1:N_DENSE] <= 1.0)  # short inputs: log_chars < 1
    assert np.all(np.abs(x[N_DENSE:]) <= HASH_BOUND + 1e-12)
    np.testing.assert_array_equal(x, featurize(messages))
    assert estimate_tokens(messages) >= 3 + 4 * len(messages)


def test_lone_surrogate_from_json_does_not_crash():
    messages = json.loads('[{"role": "user", "content": "hi \\ud800 there"}]')
    assert np.all(np.isfinite(featurize(messages)))
    assert estimate_tokens(messages) > 0


@pytest.mark.parametrize("text", [
    "What is the capital of France? " * 20,
    "def f(x):\n    return x * 2\n" * 30,
    "A" * 4001,
])
def test_estimate_tokens_is_about_a_quarter_of_the_characters(text):
    n = estimate_tokens(user(text))
    assert n == len(text) // 4 + 4 + 3
    assert len(text) / 4 <= n <= len(text) / 4 + 8


def test_estimate_tokens_counts_bytes_and_messages():
    assert estimate_tokens([]) == 3
    assert estimate_tokens(user("日本語")) == 9 // 4 + 7  # 9 UTF-8 bytes
    two = [{"role": "system", "content": "x" * 40}, {"role": "user", "content": [{"type": "text", "text": "y" * 80}]}]
    assert estimate_tokens(two) == 10 + 4 + 20 + 4 + 3


# ---------------------------------------------------------------- categories


@pytest.mark.parametrize(("text", "category"), [
    ("Write a Python function that returns the nth Fibonacci number.", "coding"),
    ("My code throws an exception:\n```\nimport numpy\n```", "coding"),
    ("Prove step by step that the square root of 2 is irrational.", "reasoning"),
    ("The trophy doesn't fit in the suitcase because _ is too large.", "reasoning"),
    ("Why do plants need sunlight for photosynthesis, and how is energy stored?", "science"),
    ("Click the login button in the browser, then take a screenshot.", "computer_use"),
    ("Tell me a joke about cats.", "general"),
    ("", "general"),
])
def test_default_rules(text, category):
    clf = CategoryClassifier()
    assert clf.classify(user(text)) == category
    assert set(clf.categories) == set(DEFAULT_CATEGORIES)


def test_a_single_weak_hit_stays_general():
    clf = CategoryClassifier()
    assert clf.scores("I found a bug.")["coding"] == 1.0  # below min_score=2
    assert clf.classify(user("I found a bug.")) == "general"


def test_system_prompt_counts_and_long_texts_keep_head_and_tail():
    clf = CategoryClassifier()
    sys_msg = [{"role": "system", "content": "You write Python functions."},
               {"role": "user", "content": "Write a function to add two numbers."}]
    assert clf.classify(sys_msg) == "coding"
    filler = "lorem ipsum " * 1000
    assert clf.classify_text(filler + "Write a Python function to sort." + filler) == "general"  # middle dropped
    assert clf.classify_text(filler + "Write a Python function to sort.") == "coding"  # tail kept


def test_custom_rules_from_a_dict():
    clf = CategoryClassifier(rules={"legal": [(r"\bcontract|clause\b", 2.0)], "food": [(r"\brecipe\b", 1.0)]},
                             fallback="other", min_score=2.0)
    assert clf.categories == ("legal", "food", "other")
    assert clf.classify(user("Review this contract clause.")) == "legal"
    assert clf.classify(user("A recipe")) == "other"  # 1.0 < min_score
    assert clf.classify(user("A recipe, another RECIPE")) == "food"  # case-insensitive, 2 hits
    assert clf.classify(user("Write a Python function")) == "other"  # defaults replaced, not merged


def _reference_scores(clf: CategoryClassifier, text: str) -> dict[str, float]:
    """What the rules score with Python's re alone, every rule scanned (ASCII classes, as documented)."""
    half = clf.max_chars // 2
    text = (text[:half] + text[-half:] if len(text) > clf.max_chars else text).lower()
    flags = {p: re.M if not p.isascii() or "(?u" in p else re.M | re.ASCII for r in clf.rules.values() for p, _ in r}
    return {c: sum(w * min(len(re.findall(p, text, flags[p])), clf.cap) for p, w in rules)
            for c, rules in clf.rules.items()}


# pieces of the default rules' own vocabulary, so that random texts hit them, near misses and all
_VOCAB = sorted({w for rules in DEFAULT_RULES.values() for p, _ in rules for w in re.findall(r"[a-z+#.`]+", p)}
                | {"def f(", "class a:", "import os", "```", " _ ", "_.", "step by step", "é", "ß", "中文", "naïve"})
_SEPARATORS = st.sampled_from([" ", "  ", "\n", "\t", "\v", ", ", ". ", "_", "-", "", "é", "(", ":", "\ud800"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_VOCAB), _SEPARATORS), max_size=60), st.integers(0, 3))
def test_the_fast_engine_scores_what_re_scores(pieces, repeat):
    """RE2 (the set that finds the rules that match, and the counting in long texts) scores exactly
    what Python's re scores, short texts and texts past the length where RE2 counts."""
    clf = CategoryClassifier()
    text = "".join(w + sep for w, sep in pieces) * (1 + repeat * 30)
    assert clf.scores(text) == _reference_scores(clf, text)


def test_the_fast_engine_on_a_long_text_and_the_rules_re2_refuses():
    clf = CategoryClassifier()
    long = "Please debug this Python exception. " * 60  # past _SHORT: counted by RE2, capped at 5 a rule
    assert len(long) > _SHORT
    assert clf.scores(long) == _reference_scores(clf, long) and clf.scores(long)["coding"] == 5 * 1.0
    lone = "write a python function\ud800 that adds, then debug it\udfff"  # lone surrogates: no error
    for text in (lone, lone * 40):
        assert clf.scores(text) == _reference_scores(clf, text)
    # a vertical tab: \s in Python, not in RE2 (so every rule is counted by re in such a text)
    vt = CategoryClassifier(rules={"x": [(r"foo\sbar", 2.0), (r"a\Sb", 2.0)]})
    for text in ("foo\vbar", "a\vb foo bar", ("foo\vbar a\vb " * 100)):
        assert vt.scores(text) == _reference_scores(vt, text)
    # rules that can match the empty string (google-re2's finditer repeats some empty matches): re
    empty = CategoryClassifier(rules={"x": [(r"^", 1.0), (r"$", 1.0), (r"\b", 0.5), (r"z*", 0.25)]}, cap=10**6)
    for text in ("a\nb\n", "ab cd", ("a\nb c\n" + "x" * 2000), ("ab cd\n" * 300)):
        assert empty.scores(text) == _reference_scores(empty, text)
    # POSIX-looking classes: characters in Python, a class in RE2
    with pytest.warns(FutureWarning, match="nested set"):  # Python's own warning about the pattern
        posix = CategoryClassifier(rules={"x": [(r"[[:alpha:]]+", 2.0)]})
    for text in ("abc", ":]", "abc :] " * 200):  # ":]" matches in Python, not in RE2
        assert posix.scores(text) == _reference_scores(posix, text)
    # multiline ^ in the set: the match is on a later line only
    m = CategoryClassifier(rules={"x": [(r"^import\b", 2.0)]})
    assert m.scores("text first\nimport os") == {"x": 2.0} == _reference_scores(m, "text first\nimport os")
    # what RE2 could count otherwise stays with re: inline flags ((?i) folds ſ into s in RE2), empty
    # matches, big bounded repeats (RE2's DFA thrashes); a rule that is not ASCII keeps Unicode \b
    other = {"x": [(r"(?i)b\W+c", 1.0), (r"(?-m:a$)", 1.0), (r"\B", 1.0), (r"a??", 1.0),
                   (r"a[^\n]{0,300}q", 1.0), (r"\bпривет\b", 1.0)]}
    clf_other = CategoryClassifier(rules=other)
    assert clf_other._in_set == [] and len(clf_other._always) == 6
    for text in ("b ſ c", "b ſ c a\n" * 300):
        assert clf_other.scores(text) == _reference_scores(clf_other, text)
    assert clf_other.scores("b ſ c")["x"] == 1.0 + 2.0 + 5.0  # (?i) rule once, \B twice, a?? capped at 5
    assert CategoryClassifier(rules={"x": [(r"\bпривет\b", 2.0)]}).classify_text("Привет, мир") == "x"
    assert CategoryClassifier() == CategoryClassifier()
    assert sum(len(r) for _, r in CategoryClassifier()._compiled) == len(CategoryClassifier()._in_set)  # all RE2
    # a lookbehind and a possessive repeat (RE2 refuses both) and {,n} (RE2 would read it as text)
    odd = CategoryClassifier(rules={"x": [(r"(?<=a)b", 1.0), (r"c++d", 1.0), (r"ef{,2}g", 1.0)]}, min_score=3.0)
    for text in ("ab cd effg", ("ab cd effg " * 200)):
        assert odd.scores(text) == _reference_scores(odd, text)
    assert odd.classify_text("ab cd effg") == "x"
    assert odd.classify_text("ab cd efffg") == "general"  # three f: not ef{,2}g


def test_a_classifier_and_a_router_pickle_and_copy():
    import copy
    import pickle

    from bandit_router.costs import Price
    from bandit_router.router import ModelSpec, Router

    clf = CategoryClassifier(rules={"legal": [(r"\bcontract\b", 2.0)]}, fallback="other", cap=3)
    for twin in (pickle.loads(pickle.dumps(clf)), copy.deepcopy(clf)):
        assert (twin.rules, twin.fallback, twin.cap) == (clf.rules, clf.fallback, clf.cap)
        assert twin.classify_text("a contract") == "legal" and twin.classify_text("a recipe") == "other"
    router = Router([ModelSpec("m", Price(1.0, 2.0))])
    assert copy.deepcopy(router).infer_category(user("Write a Python function")) == "coding"


def test_bad_regex_names_the_category():
    with pytest.raises(ValueError, match=r"categories\.rules\.broken\[1\]: bad pattern '\(unclosed'"):
        CategoryClassifier(rules={"fine": [(r"ok", 1.0)], "broken": [(r"good", 1.0), (r"(unclosed", 1.0)]})
