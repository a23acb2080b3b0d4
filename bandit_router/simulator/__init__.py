"""The simulated LLM provider fleet: OpenAI's wire format on loopback, models after the seed article.

``run_simulator`` serves it (``bandit-router simulate``); ``make_app`` is the aiohttp app factory
for tests; ``grade`` scores an answer under the ``EXPECTED:``/``ANSWER:`` protocol.
"""

from .engine import AdminUpdate, Outcome, SimError, Simulator
from .profile import Profile, ProfileError, builtin_profile, load_profile, parse_profile, profile_yaml
from .protocol import expected_answer, grade, parse_answer
from .server import CATEGORY_HEADER, SIMULATOR_KEY, make_app, run_simulator

__all__ = [
    "AdminUpdate", "CATEGORY_HEADER", "Outcome", "Profile", "ProfileError", "SIMULATOR_KEY", "SimError",
    "Simulator", "builtin_profile", "expected_answer", "grade", "load_profile", "make_app", "parse_answer",
    "parse_profile", "profile_yaml", "run_simulator",
]
