"""Tests for the replay benchmark's peer learners (optional ``bench`` extra)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bandit_router.replay.peers import (
    BENCH_INSTALL_HINT,
    PEER_NAMES,
    MabwiserLinTSPeer,
    Peer,
    PeerUnavailable,
    VowpalWabbitPeer,
    make_peer,
)

PEER_PACKAGES = {"vw": "vowpalwabbit", "mabwiser_lints": "mabwiser"}

N_ARMS = 3
D = 4
BASE_MEANS = np.array([0.2, 0.4, 0.8])


@pytest.fixture(params=PEER_NAMES)
def peer_name(request: pytest.FixtureRequest) -> str:
    pytest.importorskip(PEER_PACKAGES[request.param])
    return request.param


def _build(name: str, seed: int, **kwargs) -> Peer:
    if kwargs:
        cls = {"vw": VowpalWabbitPeer, "mabwiser_lints": MabwiserLinTSPeer}[name]
        return cls(N_ARMS, D, seed, **kwargs)
    return make_peer(name, N_ARMS, D, seed)


class SyntheticEnv:
    """3 arms, d=4 (constant + 3 uniform features); arm 2 is best for every context.

    P(reward=1 | x, a) = BASE_MEANS[a] + 0.05 * w_a . u  with |0.05 * w_a . u| <= 0.09, so
    the per-context means stay within 0.2/0.4/0.8 +- 0.09.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.w = self.rng.uniform(-1.0, 1.0, size=(N_ARMS, D - 1)) * 0.6

    def context(self) -> np.ndarray:
        return np.concatenate(([1.0], self.rng.uniform(-1.0, 1.0, size=D - 1)))

    def reward(self, x: np.ndarray, arm: int) -> float:
        p = BASE_MEANS[arm] + 0.05 * float(self.w[arm] @ x[1:])
        return float(self.rng.random() < p)


def _run(peer: Peer, steps: int, env_seed: int = 11, masks: bool = False) -> list[int]:
    env = SyntheticEnv(env_seed)
    mask_rng = np.random.default_rng(env_seed + 1)
    choices = []
    for _ in range(steps):
        x = env.context()
        if masks:
            eligible = mask_rng.random(N_ARMS) < 0.5
            if not eligible.any():
                eligible[mask_rng.integers(N_ARMS)] = True
        else:
            eligible = np.ones(N_ARMS, dtype=bool)
        arm = peer.choose(x, eligible)
        assert isinstance(arm, int)
        assert eligible[arm], f"{peer.name} chose ineligible arm {arm} for mask {eligible}"
        peer.learn(x, arm, env.reward(x, arm))
        choices.append(arm)
    return choices


def _close(peer: Peer) -> None:
    peer.close()  # type: ignore[attr-defined]


@pytest.mark.peers
def test_learns_best_arm(peer_name: str) -> None:
    peer = _build(peer_name, seed=3)
    assert isinstance(peer, Peer)
    assert peer.name == peer_name
    try:
        choices = np.array(_run(peer, 2000))
    finally:
        _close(peer)
    share = float(np.mean(choices[-500:] == 2))
    assert share > 0.7, f"{peer_name} picked the best arm in only {share:.1%} of the last 500 steps"


@pytest.mark.peers
def test_respects_eligibility(peer_name: str) -> None:
    peer = _build(peer_name, seed=5)
    try:
        choices = _run(peer, 600, masks=True)  # asserts eligibility at every step
    finally:
        _close(peer)
    assert len(set(choices)) == N_ARMS


@pytest.mark.peers
def test_single_eligible_arm(peer_name: str) -> None:
    peer = _build(peer_name, seed=0)
    try:
        _run(peer, 20)
        x = np.array([1.0, 0.3, -0.2, 0.0])
        for only in range(N_ARMS):
            eligible = np.zeros(N_ARMS, dtype=bool)
            eligible[only] = True
            assert peer.choose(x, eligible) == only
            peer.learn(x, only, -0.25)
    finally:
        _close(peer)


@pytest.mark.peers
def test_same_seed_same_choices(peer_name: str) -> None:
    runs = []
    for seed in (7, 7, 8):
        peer = _build(peer_name, seed=seed)
        try:
            runs.append(_run(peer, 400, masks=True))
        finally:
            _close(peer)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.peers
def test_mabwiser_fast_path_matches_public_api() -> None:
    pytest.importorskip("mabwiser")
    fast = MabwiserLinTSPeer(N_ARMS, D, 13)
    slow = MabwiserLinTSPeer(N_ARMS, D, 13, fast=False)
    assert fast.fast and not slow.fast
    assert _run(fast, 300, masks=True) == _run(slow, 300, masks=True)


@pytest.mark.peers
def test_invalid_inputs(peer_name: str) -> None:
    peer = _build(peer_name, seed=1)
    x = np.ones(D)
    try:
        with pytest.raises(ValueError, match="no eligible arm"):
            peer.choose(x, np.zeros(N_ARMS, dtype=bool))
        with pytest.raises(ValueError, match="shape"):
            peer.choose(np.ones(D + 1), np.ones(N_ARMS, dtype=bool))
        with pytest.raises(TypeError, match="boolean"):
            peer.choose(x, np.ones(N_ARMS, dtype=int))
        arm = peer.choose(x, np.ones(N_ARMS, dtype=bool))
        with pytest.raises(ValueError, match="finite"):
            peer.learn(x, arm, float("nan"))
    finally:
        _close(peer)


@pytest.mark.peers
def test_vw_learn_must_follow_choose() -> None:
    pytest.importorskip("vowpalwabbit")
    with VowpalWabbitPeer(N_ARMS, D, 0) as peer:
        x = np.array([1.0, 0.5, 0.0, -0.5])
        with pytest.raises(RuntimeError, match="must follow choose"):
            peer.learn(x, 0, 1.0)
        arm = peer.choose(x, np.ones(N_ARMS, dtype=bool))
        with pytest.raises(ValueError, match="most recent choose"):
            peer.learn(x, (arm + 1) % N_ARMS, 1.0)
        with pytest.raises(ValueError, match="most recent choose"):
            peer.learn(x + 1.0, arm, 1.0)
        peer.learn(x, arm, 1.0)
        with pytest.raises(RuntimeError, match="must follow choose"):
            peer.learn(x, arm, 1.0)  # one learn per choose
    with pytest.raises(RuntimeError, match="closed"):
        peer.choose(x, np.ones(N_ARMS, dtype=bool))
    peer.close()  # idempotent


def test_make_peer_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown peer"):
        make_peer("nope", N_ARMS, D, 0)


@pytest.mark.parametrize(
    ("name", "module", "package"),
    [
        ("vw", "vowpalwabbit", "vowpalwabbit"),
        ("mabwiser_lints", "mabwiser.mab", "mabwiser"),
    ],
)
def test_missing_package_raises_peer_unavailable(
    monkeypatch: pytest.MonkeyPatch, name: str, module: str, package: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(PeerUnavailable) as info:
        make_peer(name, N_ARMS, D, 0)
    assert isinstance(info.value, RuntimeError)
    assert repr(package) in str(info.value)
    assert BENCH_INSTALL_HINT in str(info.value)
