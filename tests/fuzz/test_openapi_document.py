"""The OpenAPI documents name exactly the routes auth and collect serve (built in-process, nothing started)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from services.auth.app import create_app as create_auth
from services.auth.config import AuthConfig
from services.auth.openapi import SPEC as AUTH_SPEC
from services.collect.app import create_app as create_collect
from services.collect.config import CollectConfig
from services.collect.openapi import spec as collect_spec
from shared.wire.errors import ServiceError


def served(app: Starlette) -> set[tuple[str, str]]:
    """(path, method) of every route; a mount of static files serves ``GET {mount}/{path}``; HEAD comes with GET."""
    pairs: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Mount):
            pairs.add((f"{route.path}/{{path}}", "get"))
        else:
            assert isinstance(route, Route) and route.methods
            pairs |= {(route.path, method.lower()) for method in route.methods - {"HEAD"}}
    return pairs


def documented(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, operations in spec["paths"].items() for method in operations}


def test_auth_document_names_every_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """auth's document lists exactly the paths and methods its Starlette app routes."""
    monkeypatch.setenv("APP_ENV", "development")
    assert documented(AUTH_SPEC) == served(create_auth(AuthConfig.from_env()))


@pytest.mark.parametrize("app_env", ["development", "production"])
async def test_collect_document_names_every_route(monkeypatch: pytest.MonkeyPatch, app_env: str) -> None:
    """collect's document lists exactly its routes, the development-only ones only outside production."""
    monkeypatch.setenv("APP_ENV", "development")
    config = CollectConfig.from_env()  # production refuses the development keys; only the routes differ
    app = create_collect(dataclasses.replace(config, app_env=app_env))
    assert documented(collect_spec(app_env == "production")) == served(app)
    assert (("/dev/tokens", "post") in served(app)) == (app_env == "development")


def test_documents_describe_each_error_with_its_status_and_code() -> None:
    """Every documented 4xx/5xx JSON response is the error shape with codes shared/wire/errors.py gives that status."""
    codes: dict[int, set[str]] = {}
    for kind in ServiceError.__subclasses__():
        codes.setdefault(kind.status, set()).add(kind.code)
    for spec in (AUTH_SPEC, collect_spec(False)):
        for path, operations in spec["paths"].items():
            for status, response in [(s, r) for op in operations.values() for s, r in op["responses"].items()]:
                if int(status) >= 400 and path != "/healthz":
                    error, named = response["content"]["application/json"]["schema"]["allOf"]
                    assert error == {"$ref": "#/components/schemas/Error"}
                    documented = named["properties"]["error"]["properties"]["code"]["enum"]
                    assert documented and set(documented) <= codes[int(status)], (path, status)
