"""The routes every served model has beside its APIs: which ones anyone may call, and the API
names they reserve.

Standard library only: the pack imports it to refuse an API named after one of these routes,
and needs no web framework for that.
"""

from __future__ import annotations

# GET and HEAD on these answer without an API key. The page for people is static and tells
# only whether a key is needed; the data it shows comes from the routes behind the key.
PUBLIC_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/docs", "/redoc", "/openapi.json", "/ui", "/ui/config"}
)
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_METHODS = frozenset({"GET", "HEAD"})

# The first part of every built-in route's path. An API is served at /<api>, so an API of one
# of these names would be shadowed by the built-in route or share its key rules.
RESERVED_API_NAMES = frozenset(
    {
        "card",
        "docs",
        "healthz",
        "info",
        "job",
        "metrics",
        "openapi.json",
        "readyz",
        "redoc",
        "static",
        "ui",
    }
)


def is_public(method: str, path: str, also: frozenset[str] = frozenset()) -> bool:
    """Whether anyone may call ``method path``: GET or HEAD on a public route or on ``also``."""
    if method.upper() not in PUBLIC_METHODS:
        return False
    return path in PUBLIC_PATHS or path in also or path.startswith(PUBLIC_PREFIXES)
