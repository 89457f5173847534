"""auth's settings, from the environment (``python -m services.auth --print-config`` lists them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from shared.infra.config import DEV_ADMIN_KEY, DEV_JWT_KEY, Settings, setting


@dataclass(frozen=True)
class AuthConfig(Settings):
    SERVICE: ClassVar[str] = "auth"
    PREFIXES: ClassVar[tuple[str, ...]] = ("AUTH_", "JWT_")
    ELSEWHERE: ClassVar[tuple[str, ...]] = ("AUTH_URL",)

    host: str = setting("AUTH_HOST", "127.0.0.1", "where auth listens")
    port: int = setting("AUTH_PORT", 8001, "its port")
    admin_key: str = setting("AUTH_ADMIN_KEY", DEV_ADMIN_KEY, "Bearer key that may call `POST /v1/tokens`", secret=True)
    algorithm: str = setting("JWT_ALGORITHM", "HS256", "HS256 (a shared key) or RS256 (a key pair)")
    jwt_key: str = setting("JWT_KEY", DEV_JWT_KEY, "the HS256 signing and verifying key", secret=True)
    private_key_file: str = setting("JWT_PRIVATE_KEY_FILE", "", "RS256 PEM private key; without it auth only verifies")
    public_key_file: str = setting("JWT_PUBLIC_KEY_FILE", "", "RS256 PEM public key (required for RS256)")
    issuer: str | None = setting("JWT_ISSUER", None, "set `iss` on tokens and require it when verifying")
    audience: str | None = setting("JWT_AUDIENCE", None, "set `aud` on tokens and require it when verifying")
    max_ttl_seconds: int = setting("TOKEN_MAX_TTL_SECONDS", 7 * 24 * 3600, "the longest lifetime `POST /v1/tokens` grants",
                                   low=1)
    verifying_key: str = field(default="")  # derived: JWT_KEY, or the public key file's text
    signing_key: str | None = field(default=None)  # derived: JWT_KEY, the private key file's text, or none

    @classmethod
    def derive(cls, values: dict[str, Any]) -> None:
        if values["algorithm"] == "HS256":
            values["signing_key"] = values["verifying_key"] = values["jwt_key"]
        elif values["algorithm"] == "RS256":
            if not values["public_key_file"]:
                raise SystemExit("auth: JWT_ALGORITHM=RS256 needs JWT_PUBLIC_KEY_FILE")
            values["jwt_key"] = ""  # unused: its development default is no secret here
            values["verifying_key"] = Path(values["public_key_file"]).read_text()
            private = values["private_key_file"]
            values["signing_key"] = Path(private).read_text() if private else None
        else:
            raise SystemExit(f"auth: JWT_ALGORITHM must be HS256 or RS256, not {values['algorithm']!r}")
