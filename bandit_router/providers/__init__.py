"""Upstream providers behind one interface (see :mod:`.base`)."""

from .base import Completion, Provider, UpstreamError, Usage
from .openai_compat import OpenAICompatProvider

__all__ = ["Completion", "OpenAICompatProvider", "Provider", "UpstreamError", "Usage"]
