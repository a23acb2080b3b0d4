"""bandit-router: an adaptive LLM router using per-category contextual Thompson sampling.

The public API of the learning core::

    Router, BanditSettings, ModelSpec, Decision   the router: decide() and learn()
    Price, PriceTable                             the cost model
    CategoryClassifier                            category inference
    featurize, estimate_tokens                    request features
    Posterior                                     one arm's sufficient statistics
"""

from .categories import DEFAULT_CATEGORIES, CategoryClassifier
from .costs import Price, PriceTable
from .features import DIM, estimate_tokens, featurize
from .policy import NoEligibleModel
from .posterior import Posterior
from .router import BanditSettings, Decision, ModelSpec, Router

__all__ = [
    "DEFAULT_CATEGORIES", "DIM", "BanditSettings", "CategoryClassifier", "Decision", "ModelSpec",
    "NoEligibleModel", "Posterior", "Price", "PriceTable", "Router", "estimate_tokens", "featurize",
]
__version__ = "0.1.0"
