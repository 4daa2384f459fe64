"""Readers' access tokens: each reader's link carries a secret made at `craft study create` (or
`craft study token`), printed once; the study keeps only its SHA-256.

The tokens are drawn from `secrets`, never from the study seed: a seed is shared and reproducible,
an access token must be neither. A plain SHA-256 is enough to store them because they are random
with 144 bits (a password would need a slow hash); comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import quote

PREFIX = "sha256:"


def new_token() -> str:
    return secrets.token_urlsafe(18)


def token_hash(token: str) -> str:
    return PREFIX + hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str | None, stored: str | None) -> bool:
    if not token or not stored:
        return False
    return hmac.compare_digest(token_hash(token).encode(), stored.encode())


def issue(readers: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(reader -> token, to print once; reader -> hash, to store)."""
    tokens = {reader: new_token() for reader in readers}
    return tokens, {reader: token_hash(token) for reader, token in tokens.items()}


def reader_link(base_url: str, reader: str, token: str) -> str:
    """The page reads reader and token from the fragment, which browsers never send to a server
    (so the token stays out of access logs), then drops it from the address bar."""
    return f"{base_url.rstrip('/')}/#reader={quote(reader)}&token={quote(token)}"
