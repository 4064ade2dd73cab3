from .oidc import AIPowerAuthenticator, home_page_access

__all__ = ["AIPowerAuthenticator", "home_page_access"]
