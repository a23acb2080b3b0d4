"""The built-in simulator profile, from the seed article (../shared/docs/seed-article.txt,
"The Orchestration Moat", Mar 8 2026) and its table of four models.

Published figures (the article's table) are used as they are, as probabilities of a right answer:
computer use = OSWorld, coding = SWE-bench, science = GPQA-Diamond, reasoning = ARC-AGI-2,
general = the Artificial Analysis Intelligence Index mapped by :data:`GENERAL_RULE`. Every value the
article does not give is marked with an ``assumption`` saying what was assumed and why.
"""

from __future__ import annotations

from typing import Any

SOURCE = "seed article table (The Orchestration Moat, 2026-03-08)"
GENERAL_OFFSET = 0.25
GENERAL_RULE = (
    f"general: p = Artificial Analysis Intelligence Index / 100 + {GENERAL_OFFSET}. The index averages hard "
    "evaluations (scores in the 50s); everyday general traffic is easier. The offset puts the three frontier "
    "models at 0.78-0.82, near the mean of their four domain scores (79.6-80.0%), and keeps the index's order.")

# (benchmark, published percentage or None) per category; "~" values are the article's approximations
_TABLE: dict[str, dict[str, float | None]] = {
    "gpt-5.4": {"computer_use": 75.0, "coding": 78.0, "science": 92.8, "reasoning": 73.3, "general": 57},
    "claude-opus-4.6": {"computer_use": 72.7, "coding": 80.8, "science": 91.3, "reasoning": 75.2, "general": 53},
    "gemini-3.1-pro": {"computer_use": 71.0, "coding": 76.0, "science": 94.3, "reasoning": 77.1, "general": 57},
    "glm-5": {"computer_use": None, "coding": 77.8, "science": 86.0, "reasoning": None, "general": 54},
}
_BENCHMARK = {"computer_use": "OSWorld", "coding": "SWE-bench", "science": "GPQA-Diamond",
              "reasoning": "ARC-AGI-2", "general": "Artificial Analysis Intelligence Index"}
_APPROX = {("gemini-3.1-pro", "computer_use"): "the article gives ~71%; taken as 71%",
           ("glm-5", "general"): "the article gives ~54; taken as 54"}

# GLM-5's reasoning: the article reports 92.7% on AIME, not ARC-AGI-2. Assumed: the frontier mean on
# ARC-AGI-2 minus GLM-5's mean gap to the frontier on the two benchmarks all four share (coding, science).
_FRONTIER = ("gpt-5.4", "claude-opus-4.6", "gemini-3.1-pro")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _glm_reasoning() -> tuple[float, str]:
    gaps = [_TABLE["glm-5"][c] - _mean([_TABLE[m][c] for m in _FRONTIER]) for c in ("coding", "science")]  # type: ignore[operator]
    frontier = _mean([_TABLE[m]["reasoning"] for m in _FRONTIER])  # type: ignore[misc]
    value = round(frontier + _mean(gaps), 1)
    note = (f"the article reports '92.7% AIME', a different and easier benchmark than ARC-AGI-2, so it is not "
            f"used. Assumed: the frontier mean on ARC-AGI-2 ({frontier:.1f}%) plus GLM-5's mean gap to the "
            f"frontier on coding and science ({_mean(gaps):+.1f} points) = {value}%")
    return value, note


def _quality(model: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for category, value in _TABLE[model].items():
        score: dict[str, Any] = {"benchmark": _BENCHMARK[category], "source": SOURCE}
        if value is None and category == "computer_use":
            score.update(p=None, assumption="the article gives N/A: the model does not serve computer use")
        elif value is None:
            value, note = _glm_reasoning()
            score.update(p=round(value / 100, 4), benchmark="ARC-AGI-2 (estimated)", assumption=note)
        elif category == "general":
            score.update(p=round(value / 100 + GENERAL_OFFSET, 4), assumption=f"index {value:g} mapped by the "
                         f"rule: p = index/100 + {GENERAL_OFFSET}")
        else:
            score["p"] = round(value / 100, 4)
        if (model, category) in _APPROX:
            score["assumption"] = "; ".join(x for x in (_APPROX[model, category], score.get("assumption")) if x)
        out[category] = score
    return out


# completion tokens per category (mean; cv 0.4), times a per-model verbosity: all assumptions
_TOKENS = {"coding": 450, "reasoning": 350, "science": 180, "computer_use": 120, "general": 220}
_VERBOSITY = {"gpt-5.4": 1.0, "claude-opus-4.6": 1.15, "gemini-3.1-pro": 0.9, "glm-5": 1.25}
# (median ttft ms, median tokens/s) at latency_scale 1: test speed, 1/50 of an assumed real-world
# figure (1.5 s / 90 tok/s, 2.0 s / 60, 0.6 s / 150, 0.5 s / 100), each answer log-normal around it
_LATENCY = {"gpt-5.4": (30.0, 4500.0), "claude-opus-4.6": (40.0, 3000.0),
            "gemini-3.1-pro": (12.0, 7500.0), "glm-5": (10.0, 5000.0)}
LATENCY_SIGMA = 0.35  # log-space sd: p90 = median × 1.57
_PRICE = {"gpt-5.4": (2.50, 20.0), "claude-opus-4.6": (5.00, 25.0), "gemini-3.1-pro": (2.00, 12.0),
          "glm-5": (1.00, 3.20)}
_OWNER = {"gpt-5.4": "openai", "claude-opus-4.6": "anthropic", "gemini-3.1-pro": "google", "glm-5": "zhipu-ai"}
GLM_OUTPUT_PRICE_NOTE = (
    "the article gives the input price ($1.00/1M) only. Assumed output $3.20/1M = 3.2x input: hosted "
    "open-weight models typically price output at about 3-4x input, below the 5-8x of the three frontier "
    "models in the same table; 3.20 is also the figure the README's example uses.")


def _model(name: str) -> dict[str, Any]:
    ttft, tps = _LATENCY[name]
    price_in, price_out = _PRICE[name]
    return {
        "owned_by": _OWNER[name],
        "notes": "open-weight model" if name == "glm-5" else None,
        "quality": _quality(name),
        "price": {"input": price_in, "output": price_out, "cached_input": None,
                  "assumption": GLM_OUTPUT_PRICE_NOTE if name == "glm-5" else None},
        "latency": {"ttft_ms": ttft, "tokens_per_s": tps, "sigma": LATENCY_SIGMA,
                    "assumption": f"not in the article: test speed, 1/50 of an assumed real-world median "
                                  f"{ttft * 50 / 1000:.1f} s to first token and {tps / 50:.0f} tokens/s, "
                                  f"log-normal per answer (sigma {LATENCY_SIGMA})"},
        "output_tokens": {c: {"mean": round(n * _VERBOSITY[name]), "cv": 0.4} for c, n in _TOKENS.items()},
    }


BUILTIN: dict[str, Any] = {
    "name": "seed-article-2026-03",
    "description": "GPT-5.4, Claude Opus 4.6, Gemini 3.1 Pro and GLM-5 after the seed article's table.",
    "assumptions": [
        "quality: a published benchmark score is used as the probability of a right answer in that category "
        "(computer_use = OSWorld, coding = SWE-bench, science = GPQA-Diamond, reasoning = ARC-AGI-2)",
        GENERAL_RULE,
        "glm-5 computer_use: N/A in the article; not served (answered wrong, or refused with unserved: error)",
        "glm-5 reasoning: estimated, see its quality.reasoning.assumption (the article's 92.7% is AIME)",
        "glm-5 output price: assumed $3.20/1M, see its price.assumption",
        "cached_input prices: not in the article; null, so cached prompt tokens cost the input price",
        "latency: not in the article; per-model test-speed medians, 1/50 of assumed real-world figures, "
        "log-normal per answer with sigma 0.35; latency_scale 50 approximates real time, 0 answers at once",
        "output tokens: not in the article; per category mean (coding 450, reasoning 350, general 220, "
        "science 180, computer_use 120) x model verbosity (gpt-5.4 1.0, claude-opus-4.6 1.15, "
        "gemini-3.1-pro 0.9, glm-5 1.25), log-normal with cv 0.4",
    ],
    "latency_scale": 1.0,
    "unserved": "wrong",
    "default_output_tokens": {c: {"mean": n, "cv": 0.4} for c, n in _TOKENS.items()},
    "models": {name: _model(name) for name in _TABLE},
}
