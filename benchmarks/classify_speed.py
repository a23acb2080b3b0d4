"""Category inference cost by prompt length: the classifier (RE2 set, then counting) beside Python's re
scanning every rule (what it did before), on the same texts, in one run.

    python benchmarks/classify_speed.py [--routerbench ../shared/data/routerbench]

Texts: windows of the seed article (100 to 20,000 characters; the classifier reads at most
``max_chars`` = 8,000 of them, head and tail) and every prompt and model answer of the RouterBench
subset (26,700 texts). Reported: median µs per ``scores()`` call by length, and the RouterBench total.
It also checks that both give the same scores on every RouterBench text (with re's default Unicode
classes, as before: the change is not seen on these texts), and says how many differ.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import time
from pathlib import Path

from bandit_router.categories import CategoryClassifier

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"


class ReOnly:
    """The classifier as it was: every rule scanned by Python's re (re.M, Unicode classes)."""

    def __init__(self, clf: CategoryClassifier) -> None:
        self.clf = clf
        self.rules = [(c, [(re.compile(p, re.M), float(w)) for p, w in rules]) for c, rules in clf.rules.items()]

    def scores(self, text: str) -> dict[str, float]:
        half = self.clf.max_chars // 2
        text = (text[:half] + text[-half:] if len(text) > self.clf.max_chars else text).lower()
        out = {}
        for category, rules in self.rules:
            s = 0.0
            for pattern, weight in rules:
                hits = 0
                for _ in pattern.finditer(text):
                    hits += 1
                    if hits >= self.clf.cap:
                        break
                s += weight * hits
            out[category] = s
        return out


def median_us(fn, text: str, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn(text)
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000


def routerbench_texts(root: Path) -> list[str]:
    csv.field_size_limit(10**9)
    out = []
    for f in sorted(root.glob("*.csv")):
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                out += [v for k, v in row.items() if v and (k == "prompt" or k.endswith("|model_response"))]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--routerbench", type=Path, default=SHARED / "data" / "routerbench")
    ap.add_argument("--article", type=Path, default=SHARED / "docs" / "seed-article.txt")
    args = ap.parse_args()
    fast = CategoryClassifier()
    slow = ReOnly(fast)
    article = args.article.read_text()
    print(f"{'characters':>10} | {'re, every rule':>15} | {'RE2 set + count':>15} | ratio")
    for n in (100, 1000, 4000, 8000, 20000):
        text = (article * (1 + n // len(article)))[:n]
        reps = 2000 if n <= 1000 else 200
        a, b = median_us(slow.scores, text, reps), median_us(fast.scores, text, reps)
        print(f"{n:>10} | {a:12.1f} µs | {b:12.1f} µs | {a / b:5.1f}x")
    texts = routerbench_texts(args.routerbench)
    if not texts:
        print(f"(no RouterBench texts under {args.routerbench})")
        return 0
    differ = sum(slow.scores(t) != fast.scores(t) for t in texts)
    t0 = time.perf_counter()
    for t in texts:
        slow.scores(t)
    t1 = time.perf_counter()
    for t in texts:
        fast.scores(t)
    t2 = time.perf_counter()
    mean = sum(map(len, texts)) / len(texts)
    print(f"RouterBench prompts and answers: {len(texts)} texts, {mean:.0f} characters on average; "
          f"re {1e6 * (t1 - t0) / len(texts):.1f} µs, RE2 {1e6 * (t2 - t1) / len(texts):.1f} µs a text "
          f"({(t1 - t0) / (t2 - t1):.1f}x); scores differ on {differ}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
