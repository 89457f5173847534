"""auth's settings, from the environment.

=====================  ============================  ==============================================
variable               default                       meaning
=====================  ============================  ==============================================
AUTH_HOST / AUTH_PORT  127.0.0.1 / 8001              where auth listens
AUTH_ADMIN_KEY         dev-admin-key                 Bearer key that may call POST /v1/tokens
JWT_ALGORITHM          HS256                         HS256 (shared key) or RS256 (key pair)
JWT_KEY                (development key)             HS256 signing and verifying key
JWT_PRIVATE_KEY_FILE   (none)                        RS256 PEM private key; without it auth only verifies
JWT_PUBLIC_KEY_FILE    (none)                        RS256 PEM public key (required for RS256)
JWT_ISSUER             (none)                        set ``iss`` on tokens and require it when verifying
JWT_AUDIENCE           (none)                        set ``aud`` on tokens and require it when verifying
TOKEN_MAX_TTL_SECONDS  604800                        the longest lifetime POST /v1/tokens grants
=====================  ============================  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.config import DEV_ADMIN_KEY, DEV_JWT_KEY, check_secrets, env


@dataclass(frozen=True, slots=True)
class AuthConfig:
    host: str
    port: int
    admin_key: str
    algorithm: str
    signing_key: str | None
    verifying_key: str
    issuer: str | None
    audience: str | None
    max_ttl_seconds: int

    @classmethod
    def from_env(cls) -> AuthConfig:
        algorithm = env("JWT_ALGORITHM", "HS256")
        if algorithm == "HS256":
            signing_key = verifying_key = env("JWT_KEY", DEV_JWT_KEY)
            check_secrets("auth", JWT_KEY=(signing_key, DEV_JWT_KEY))
        elif algorithm == "RS256":
            public_file, private_file = env("JWT_PUBLIC_KEY_FILE", ""), env("JWT_PRIVATE_KEY_FILE", "")
            if not public_file:
                raise SystemExit("auth: JWT_ALGORITHM=RS256 needs JWT_PUBLIC_KEY_FILE")
            verifying_key = Path(public_file).read_text()
            signing_key = Path(private_file).read_text() if private_file else None
        else:
            raise SystemExit(f"auth: JWT_ALGORITHM must be HS256 or RS256, not {algorithm!r}")
        admin_key = env("AUTH_ADMIN_KEY", DEV_ADMIN_KEY)
        check_secrets("auth", AUTH_ADMIN_KEY=(admin_key, DEV_ADMIN_KEY))
        return cls(
            host=env("AUTH_HOST", "127.0.0.1"),
            port=env("AUTH_PORT", 8001),
            admin_key=admin_key,
            algorithm=algorithm,
            signing_key=signing_key,
            verifying_key=verifying_key,
            issuer=env("JWT_ISSUER", "") or None,
            audience=env("JWT_AUDIENCE", "") or None,
            max_ttl_seconds=env("TOKEN_MAX_TTL_SECONDS", 7 * 24 * 3600),
        )
