"""The hub's authenticator, and the single-user servers' network guard.

The names are imported on first use, so that a single-user server loading the guard
(``authenticator.server_guard``) does not import oauthenticator and the hub.
"""

__all__ = ["AIPowerAuthenticator", "home_page_access"]


def __getattr__(name: str):
    if name in __all__:
        from . import oidc

        return getattr(oidc, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
