"""Purge tokens: the fleet file holds only their SHA-256; checks run in constant time.

A CI job sends `Authorization: Bearer TOKEN`. The API hashes what it got and compares
the digest with every configured digest using `hmac.compare_digest`, without stopping
at the first match, so neither a token nor which token matched leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from fleet.config import TokenConfig

__all__ = ["TokenStore", "bearer_token", "hash_token", "print_new_token"]


def hash_token(token: str) -> str:
    """The lowercase hex SHA-256 of a token, as the fleet file stores it.

    A header's bytes that are not UTF-8 arrive as surrogate escapes; they hash as the
    bytes they were (and match no token) instead of failing to encode.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None (RFC 6750 2.1)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TokenStore:
    """The configured tokens: which one a request carries, and what it may purge."""

    def __init__(self, tokens: Sequence[TokenConfig]) -> None:
        self._tokens = tuple(tokens)

    def authenticate(self, header: str | None) -> TokenConfig | None:
        """The token named by an Authorization header value, or None."""
        token = bearer_token(header)
        if token is None:
            return None
        digest = hash_token(token).encode()
        found: TokenConfig | None = None
        for candidate in self._tokens:
            if hmac.compare_digest(digest, candidate.sha256.encode()):
                found = candidate
        return found

    @staticmethod
    def allows(token: TokenConfig, service: str) -> bool:
        """Whether `token` may purge `service` ("*" in its services: every service)."""
        return "*" in token.services or service in token.services


def print_new_token() -> int:
    """Print a new random token, its SHA-256 and a fleet-file line; exit status 0."""
    token = secrets.token_urlsafe(32)
    digest = hash_token(token)
    print(f"token:  {token}")
    print(f"sha256: {digest}")
    print("fleet.toml, under [purge_api]:")
    print(f'  tokens = [{{ name = "ci", sha256 = "{digest}", services = ["*"] }}]')
    print("Keep the token secret (EDGESHIELD_TOKEN in CI); only the hash goes in the file.")
    return 0
