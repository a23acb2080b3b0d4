"""Peer learners run by the replay benchmark on the same stream as our router.

Each peer sees exactly what the router sees: a fixed-length float feature vector
``x`` (shape ``(d,)``), a boolean eligibility mask over the arms ``0..n_arms-1``, and
after each decision the scalar utility ``reward = quality - cost_weight * cost``
(may be negative, typically in ``[-0.3, 1]``). The protocol is strictly
``choose(x, eligible)`` followed by ``learn(x, arm, reward)`` for that same choice.

Both peers need the optional ``bench`` extra (``pip install -e '.[bench]'``). The
packages are imported lazily in the constructors; if one is missing the constructor
raises :class:`PeerUnavailable`, which names the package and the install command.

Peers
-----
``vw`` -- :class:`VowpalWabbitPeer`
    Vowpal Wabbit contextual bandit with action-dependent features and SquareCB
    exploration::

        --cb_explore_adf --cb_type mtr --squarecb --gamma_scale 10 --gamma_exponent 0.5
        -q sa --quiet --random_seed SEED

    ``--gamma_scale 10`` / ``--gamma_exponent 0.5`` are VW's own SquareCB defaults,
    spelled out so the benchmark configuration is explicit; other settings (18-bit
    hash, adaptive/normalised/invariant SGD, learning rate 0.5) are VW defaults.
    Each step is one ADF multi-line example: a shared line with the context
    (``shared |s f0:0.12 f3:-1.5``; zero features skipped) and one line per
    *eligible* arm carrying only an arm-identity feature (``|a arm=3``). ``-q sa``
    crosses the two namespaces, so every arm gets its own linear model of the
    context plus an intercept (``arm=3``). VW minimises cost, so ``cost = -reward``.
    The action is sampled from VW's PMF with the peer's own seeded
    ``numpy.random.Generator``; the probability of the sampled action is kept for
    the ``0:cost:prob`` label in ``learn()``.

``mabwiser_lints`` -- :class:`MabwiserLinTSPeer`
    MABWiser ``LearningPolicy.LinTS(alpha=1.0, l2_lambda=1.0)`` (MABWiser's
    defaults, no feature scaling): an independent Bayesian ridge regression per
    arm. ``choose()`` takes one Thompson sample per arm (``predict_expectations``
    of LinTS draws ``beta ~ N(beta_hat, alpha^2 A^-1)`` per arm and returns
    ``x . beta``) and picks the best sample among the eligible arms -- exactly what
    ``MAB.predict`` does, restricted to the eligible set. MABWiser cannot predict
    before its first ``fit``, so until the first ``learn()`` the peer picks a
    uniformly random eligible arm with its own seeded generator. LinTS fits no
    intercept (VW gets one from ``arm=K``), so ``x`` should contain a constant
    feature if per-arm base rates matter -- the synthetic tests use ``x[0] = 1``.

    Speed-up (``fast=True``, the default): ``MAB.partial_fit`` validates its
    arguments and then runs a ``joblib.Parallel`` loop that deep-copies every
    arm's model, which costs ~1.1-1.5 ms per call at 11 arms. The fast path calls the
    same per-arm routine MABWiser uses (``_Linear._fit_arm``) for the chosen arm
    only, followed by ``_set_arms_as_trained``; for every other arm ``_fit_arm`` is
    a no-op, so the algorithm and random streams are unchanged and the choices
    are identical to the public-API path (checked by ``tests/test_peers.py``).
    It falls back to ``MAB.partial_fit`` if those internals are missing.

Speed
-----
Wall time per ``choose()`` + ``learn()`` step at ``n_arms=11, d=32``, all arms
eligible (dense Gaussian contexts; mean over 3000 steps after a 200-step warm-up;
range over 3 runs on a shared 2-core machine; vowpalwabbit 9.11.9, mabwiser 2.7.4,
numpy 2.4):

===================================  ===============
peer                                 us per step
===================================  ===============
``vw``                               230 - 320
``mabwiser_lints`` (``fast=True``)   575 - 700
``mabwiser_lints`` (``fast=False``)  1500 - 1800 (up to 2100 seen)
===================================  ===============

VW's cost is mostly the ``vowpalwabbit.pyvw`` wrapper (one Python ``Example`` per
line, for both predict and learn). MABWiser's remaining cost is almost entirely
``predict_expectations``: one ``Generator.multivariate_normal`` draw, with a fresh
Cholesky factorisation, per arm per step (~40 us each); cutting that would mean
re-implementing LinTS rather than running MABWiser.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "BENCH_INSTALL_HINT",
    "PEER_NAMES",
    "MabwiserLinTSPeer",
    "Peer",
    "PeerUnavailable",
    "VowpalWabbitPeer",
    "make_peer",
]

PEER_NAMES = ("vw", "mabwiser_lints")
BENCH_INSTALL_HINT = "pip install -e '.[bench]'"

# Stream selector mixed into the peers' own generators so they never share a
# stream with the library they wrap (MABWiser seeds ``default_rng(seed)`` itself).
_OWN_STREAM = 0x9EE5


class PeerUnavailable(RuntimeError):
    """An optional dependency of a peer learner is not installed."""


@runtime_checkable
class Peer(Protocol):
    """A learner run side by side with the router on a replay stream."""

    name: str

    def choose(self, x: np.ndarray, eligible: np.ndarray) -> int:
        """Return an eligible arm index for context ``x``."""
        ...

    def learn(self, x: np.ndarray, arm: int, reward: float) -> None:
        """Update with the reward of ``arm`` (the most recent choice) in context ``x``."""
        ...


def _import_optional(module: str, package: str, peer: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PeerUnavailable(
            f"peer {peer!r} needs the optional package {package!r}, which is not installed; "
            f"install the bench extra with: {BENCH_INSTALL_HINT}"
        ) from exc


def _check_dims(n_arms: int, d: int, seed: int) -> None:
    if int(n_arms) < 1:
        raise ValueError(f"n_arms must be >= 1, got {n_arms}")
    if int(d) < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")


def _check_context(x: np.ndarray, d: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (d,):
        raise ValueError(f"x must have shape ({d},), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or infinite values")
    return x


def _check_eligible(eligible: np.ndarray, n_arms: int) -> np.ndarray:
    """Return the sorted indices of the eligible arms."""
    mask = np.asarray(eligible)
    if mask.shape != (n_arms,):
        raise ValueError(f"eligible must have shape ({n_arms},), got {mask.shape}")
    if mask.dtype != np.bool_:
        raise TypeError(f"eligible must be a boolean mask, got dtype {mask.dtype}")
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        raise ValueError("no eligible arm")
    return idx


def _check_arm_reward(arm: int, reward: float, n_arms: int) -> tuple[int, float]:
    arm = int(arm)
    if not 0 <= arm < n_arms:
        raise ValueError(f"arm must be in [0, {n_arms}), got {arm}")
    reward = float(reward)
    if not np.isfinite(reward):
        raise ValueError(f"reward must be finite, got {reward}")
    return arm, reward


class VowpalWabbitPeer:
    """Vowpal Wabbit ``--cb_explore_adf --squarecb`` with per-arm linear models.

    Arguments passed to VW (see the module docstring)::

        --cb_explore_adf --cb_type mtr --squarecb --gamma_scale GAMMA_SCALE
        --gamma_exponent 0.5 -q sa --quiet --random_seed SEED

    ``gamma_scale`` (default 10, VW's default) sets SquareCB's greediness:
    ``gamma_t = gamma_scale * t**0.5``; larger means less exploration.

    ``learn()`` must follow ``choose()`` for the same ``x``, with the chosen arm:
    the label needs the probability the arm was chosen with. The VW workspace is
    released by :meth:`close` (also on ``with`` exit, or when garbage collected).
    """

    name = "vw"

    def __init__(self, n_arms: int, d: int, seed: int, *, gamma_scale: float = 10.0) -> None:
        _check_dims(n_arms, d, seed)
        if not gamma_scale > 0:
            raise ValueError(f"gamma_scale must be > 0, got {gamma_scale}")
        vw = _import_optional("vowpalwabbit", "vowpalwabbit", self.name)
        self.n_arms = int(n_arms)
        self.d = int(d)
        self.seed = int(seed)
        self.gamma_scale = float(gamma_scale)
        self.args = (
            f"--cb_explore_adf --cb_type mtr --squarecb --gamma_scale {self.gamma_scale!r} "
            f"--gamma_exponent 0.5 -q sa --quiet --random_seed {self.seed}"
        )
        self._vw = vw.Workspace(self.args)
        self._rng = np.random.default_rng([self.seed, _OWN_STREAM])
        self._action_lines = [f"|a arm={a}" for a in range(self.n_arms)]
        self._feature_names = [f"f{i}:" for i in range(self.d)]
        # (x, shared line, eligible arm indices, chosen arm, its probability)
        self._pending: tuple[np.ndarray, str, np.ndarray, int, float] | None = None

    def _workspace(self):
        if self._vw is None:
            raise RuntimeError("VowpalWabbitPeer is closed")
        return self._vw

    def _shared_line(self, x: np.ndarray) -> str:
        # ".9g" round-trips float32 (VW's precision) and is ~3x faster than repr().
        feats = " ".join(
            [f"{n}{v:.9g}" for n, v in zip(self._feature_names, x.tolist(), strict=True) if v != 0.0]
        )
        return "shared |s " + feats

    def choose(self, x: np.ndarray, eligible: np.ndarray) -> int:
        x = _check_context(x, self.d)
        idx = _check_eligible(eligible, self.n_arms)
        shared = self._shared_line(x)
        lines = [shared]
        lines.extend(self._action_lines[a] for a in idx)
        pmf = np.asarray(self._workspace().predict(lines), dtype=np.float64)
        if pmf.shape != (idx.size,) or not np.all(np.isfinite(pmf)) or pmf.sum() <= 0:
            raise RuntimeError(f"unexpected VW prediction for {idx.size} actions: {pmf!r}")
        pmf = np.clip(pmf, 0.0, None)
        pmf /= pmf.sum()
        i = int(self._rng.choice(idx.size, p=pmf))
        arm = int(idx[i])
        self._pending = (x.copy(), shared, idx, arm, float(pmf[i]))
        return arm

    def learn(self, x: np.ndarray, arm: int, reward: float) -> None:
        arm, reward = _check_arm_reward(arm, reward, self.n_arms)
        if self._pending is None:
            raise RuntimeError("VowpalWabbitPeer.learn() must follow choose()")
        px, shared, idx, parm, prob = self._pending
        if arm != parm or not np.array_equal(np.asarray(x, dtype=np.float64), px):
            raise ValueError(
                "VowpalWabbitPeer.learn() must be called with the x and arm of the most recent choose() "
                f"(chose arm {parm}, got arm {arm})"
            )
        lines = [shared]
        for a in idx:
            if a == arm:
                lines.append(f"0:{-reward:.9g}:{prob:.9g} {self._action_lines[a]}")
            else:
                lines.append(self._action_lines[a])
        self._workspace().learn(lines)
        self._pending = None

    def close(self) -> None:
        """Finish the VW workspace (idempotent)."""
        if self._vw is not None:
            self._vw.finish()
            self._vw = None
        self._pending = None

    def __enter__(self) -> VowpalWabbitPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MabwiserLinTSPeer:
    """MABWiser linear Thompson sampling (``LearningPolicy.LinTS``), one model per arm.

    ``alpha`` (default 1.0) scales the posterior covariance used for sampling,
    ``l2_lambda`` (default 1.0) is the ridge prior precision; both are MABWiser's
    defaults, and features are not scaled (``scale=False``). ``fast=True`` (default)
    updates only the chosen arm's model through MABWiser's own per-arm fit routine
    instead of the ~1.1-1.5 ms ``MAB.partial_fit`` loop; the choices are identical.
    """

    name = "mabwiser_lints"

    def __init__(
        self,
        n_arms: int,
        d: int,
        seed: int,
        *,
        alpha: float = 1.0,
        l2_lambda: float = 1.0,
        fast: bool = True,
    ) -> None:
        _check_dims(n_arms, d, seed)
        mab = _import_optional("mabwiser.mab", "mabwiser", self.name)
        self.n_arms = int(n_arms)
        self.d = int(d)
        self.seed = int(seed)
        self.alpha = float(alpha)
        self.l2_lambda = float(l2_lambda)
        self._mab = mab.MAB(
            arms=list(range(self.n_arms)),
            learning_policy=mab.LearningPolicy.LinTS(alpha=self.alpha, l2_lambda=self.l2_lambda),
            seed=self.seed,
        )
        self._rng = np.random.default_rng([self.seed, _OWN_STREAM])
        imp = getattr(self._mab, "_imp", None)
        self.fast = bool(fast) and all(hasattr(imp, n) for n in ("_fit_arm", "_set_arms_as_trained"))
        self._fitted = False

    def choose(self, x: np.ndarray, eligible: np.ndarray) -> int:
        x = _check_context(x, self.d)
        idx = _check_eligible(eligible, self.n_arms)
        if not self._fitted:
            return int(idx[self._rng.integers(idx.size)])
        # LinTS predict_expectations = one posterior sample of x . beta per arm.
        sampled = self._mab.predict_expectations(x.reshape(1, -1))
        scores = np.array([sampled[a] for a in idx], dtype=np.float64)
        return int(idx[int(np.argmax(scores))])

    def learn(self, x: np.ndarray, arm: int, reward: float) -> None:
        x = _check_context(x, self.d)
        arm, reward = _check_arm_reward(arm, reward, self.n_arms)
        contexts = x.reshape(1, -1)
        decisions = np.array([arm])
        rewards = np.array([reward])
        if not self._fitted:
            self._mab.fit(decisions, rewards, contexts)
            self._fitted = True
        elif self.fast:
            imp = self._mab._imp
            imp._fit_arm(arm, decisions, rewards, contexts)
            imp._set_arms_as_trained(decisions=decisions, is_partial=True)
        else:
            self._mab.partial_fit(decisions, rewards, contexts)

    def close(self) -> None:
        """Nothing to release; present for symmetry with :class:`VowpalWabbitPeer`."""

    def __enter__(self) -> MabwiserLinTSPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_peer(name: str, n_arms: int, d: int, seed: int) -> Peer:
    """Construct the peer called ``name`` (one of :data:`PEER_NAMES`) with its defaults."""
    if name == "vw":
        return VowpalWabbitPeer(n_arms, d, seed)
    if name == "mabwiser_lints":
        return MabwiserLinTSPeer(n_arms, d, seed)
    raise ValueError(f"unknown peer {name!r}; expected one of {PEER_NAMES}")
