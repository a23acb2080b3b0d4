"""Upstream providers behind one interface (see :mod:`.base`, which also maps upstream failures to
the router's :class:`UpstreamError` and scrubs api keys from them)."""

from .anthropic import AnthropicProvider
from .base import Completion, Provider, StreamResult, UpstreamError, Usage, redact
from .openai_compat import OpenAICompatProvider

__all__ = ["AnthropicProvider", "Completion", "OpenAICompatProvider", "Provider", "StreamResult", "UpstreamError",
           "Usage", "redact"]
