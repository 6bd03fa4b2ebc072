"""``lethe serve``: an HTTP service over one workspace per tenant, with API keys and forget jobs."""

from lethe.serve.keys import ROLES, KeyStore

__all__ = ["ROLES", "KeyStore"]
