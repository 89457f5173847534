"""Pieces of the hand-written OpenAPI 3.1 documents auth and collect serve at ``GET /openapi.json``.

Each service describes its own routes in its ``openapi.py``; this module holds what they share:
the error shape (``{"error": {"code", "message"}}``, one response per ``shared.wire.errors`` class),
the operations routes every service has, and the route serving the document. A test compares
each document's paths and methods with the service's Starlette routes.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.infra.web import json_response
from shared.wire.errors import ServiceError
from shared.wire.protocol import USER_ID_PATTERN

JSON = "application/json"
USER_ID = {"type": "string", "pattern": f"^{USER_ID_PATTERN}$", "description": "1-128 letters, digits and _ . @ -"}
HEALTH = {"type": "object", "required": ["ok", "service"],
          "properties": {"ok": {"type": "boolean"}, "service": {"type": "string"}}}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def ok(description: str, schema: dict[str, Any], status: int = 200) -> dict[str, Any]:
    """A success response with a JSON body."""
    return {str(status): {"description": description, "content": json_content(schema)}}


def errors(*kinds: type[ServiceError]) -> dict[str, Any]:
    """The error responses an operation can give: per status, the kinds' descriptions and the codes its body may name."""
    by_status: dict[int, list[type[ServiceError]]] = {}
    for kind in kinds:
        by_status.setdefault(kind.status, []).append(kind)
    return {str(status): {
        "description": " Or: ".join((k.__doc__ or k.code).strip() for k in same),
        "content": json_content({"allOf": [{"$ref": "#/components/schemas/Error"},
                                           {"properties": {"error": {"properties": {"code": {"enum": sorted({k.code for k in same})}}}}}]}),
    } for status, same in by_status.items()}


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": json_content(schema)}


def error_codes() -> list[str]:
    """Every code a ``shared.wire.errors`` class answers with."""
    return sorted({kind.code for kind in ServiceError.__subclasses__()})


OPS_PATHS: dict[str, Any] = {
    "/healthz": {"get": {
        "summary": "Health of the service and its dependencies (503 with the same report while one is down)",
        "responses": {**ok("healthy", HEALTH), "503": {"description": "a dependency is down",
                                                      "content": json_content(HEALTH)}},
    }},
    "/metrics": {"get": {
        "summary": "Prometheus metrics",
        "responses": {"200": {"description": "the text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }},
    "/openapi.json": {"get": {
        "summary": "This document",
        "responses": ok("the OpenAPI 3.1 description of this service", {"type": "object"}),
    }},
}


def document(title: str, description: str, paths: dict[str, Any], security_schemes: dict[str, Any]) -> dict[str, Any]:
    """A whole OpenAPI 3.1 document: ``paths`` plus the operations routes, the error schema and the security schemes."""
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1", "description": description},
        "paths": {**paths, **OPS_PATHS},
        "components": {
            "schemas": {"Error": {
                "type": "object", "required": ["error"], "additionalProperties": False,
                "properties": {"error": {
                    "type": "object", "required": ["code", "message"], "additionalProperties": False,
                    "properties": {"code": {"enum": error_codes()}, "message": {"type": "string"}},
                }},
            }},
            "securitySchemes": security_schemes,
        },
    }


def openapi_route(spec: dict[str, Any]) -> Route:
    """``GET /openapi.json`` serving ``spec``."""

    async def serve(_: Request) -> Response:
        return json_response(spec)

    return Route("/openapi.json", serve)
