"""Issuing and verifying the JWTs browsers present to push nodes."""

from __future__ import annotations

import time

import jwt

from shared.model.topics import MAX_PATTERNS, valid_pattern
from shared.wire.errors import InvalidFields, NotFound, Unauthorized
from shared.wire.protocol import Identity


class TokenService:
    """Verification accepts exactly one algorithm, so ``alg: none`` and HS/RS confusion are refused."""

    def __init__(
        self,
        algorithm: str,
        verifying_key: str,
        signing_key: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        max_ttl_seconds: int = 7 * 24 * 3600,
    ) -> None:
        self.algorithm = algorithm
        self.verifying_key = verifying_key
        self.signing_key = signing_key
        self.issuer = issuer
        self.audience = audience
        self.max_ttl_seconds = max_ttl_seconds

    def issue(self, user_id: str, ttl_seconds: int, topics: object = ()) -> tuple[str, int]:
        """A token for ``user_id``; ``topics`` (names or ``prefix:*`` patterns) become its ``topics`` claim."""
        if self.signing_key is None:
            raise NotFound("this auth instance only verifies tokens (no signing key configured)")
        if not 1 <= ttl_seconds <= self.max_ttl_seconds:
            raise InvalidFields(f"ttl_seconds must be 1..{self.max_ttl_seconds}")
        if not isinstance(topics, (list, tuple)) or len(topics) > MAX_PATTERNS or not all(map(valid_pattern, topics)):
            raise InvalidFields(f"topics must be a list of at most {MAX_PATTERNS} topic names or 'prefix:*' patterns")
        now = int(time.time())
        claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        if topics:
            claims["topics"] = list(topics)
        return jwt.encode(claims, self.signing_key, algorithm=self.algorithm), now + ttl_seconds

    def verify(self, token: str) -> Identity:
        required = ["exp", "sub"] + (["iss"] if self.issuer else []) + (["aud"] if self.audience else [])
        try:
            claims = jwt.decode(
                token,
                self.verifying_key,
                algorithms=[self.algorithm],
                issuer=self.issuer,
                audience=self.audience,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise Unauthorized("token subject must be a non-empty string")
        topics = claims.get("topics", [])
        if not isinstance(topics, list) or not all(map(valid_pattern, topics)):
            raise Unauthorized("token topics claim must be a list of topic names or 'prefix:*' patterns")
        return Identity(claims["sub"], int(claims["exp"]), tuple(topics))
