"""API authentication: DRF's token authentication, refusing malformed keys before they reach the database."""

from rest_framework import authentication, exceptions


class TokenAuthentication(authentication.TokenAuthentication):
    """``Authorization: Token <key>``; a key that is not 1 to 40 letters and digits is refused (401).

    DRF's own class would look such a key up, and PostgreSQL refuses a NUL
    character in a query with an error (a 500) rather than a non-match.
    """

    def authenticate_credentials(self, key: str):
        if not (0 < len(key) <= 40 and key.isascii() and key.isalnum()):
            raise exceptions.AuthenticationFailed("Invalid token.")
        return super().authenticate_credentials(key)
