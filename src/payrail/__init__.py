"""payrail: a payments service that never loses or invents money.

The library surface is what `__all__` names: the HTTP client and webhook verification.
Everything else is the service's inside and may change between versions.
"""

from payrail.support import python_version as _python

_python.check()  # before anything newer-only is imported: a clear message, not a SyntaxError

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "PayoutFailed",
    "RetryPolicy",
    "WebhookVerificationError",
    "__version__",
    "verify_webhook",
]

_LAZY = {
    "ApiError": "payrail.client",
    "AsyncClient": "payrail.client",
    "Client": "payrail.client",
    "PayoutFailed": "payrail.client",
    "RetryPolicy": "payrail.client",
    "verify_webhook": "payrail.client",
    "WebhookVerificationError": "payrail.webhooks",
}


def __getattr__(name: str) -> object:
    """The surface is imported on first use: the server does not load the client's code."""
    if name not in _LAZY:
        raise AttributeError(f"module 'payrail' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
