"""Every error the API gives, in one JSON shape, and how OpenAPI documents it.

A client reads one field (`error`) whatever went wrong, and nothing the client sends reaches a
500: the store's exceptions, FastAPI's validation errors and Starlette's own answers (no such
path, a body it cannot decode) are all mapped here to a status and a message that names the
problem.
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from hpcscale.config import Settings
from hpcscale.errors import AuthError, InvalidTransition, NotFound, StaleLease, StoreError
from hpcscale.models import NO_NUL, ResultOutcome
from hpcscale.server.middleware import BodyTooLarge

log = logging.getLogger("hpcscale.server")


class ApiError(BaseModel):
    """The body of every error answer, so a client reads one field whatever went wrong."""

    error: str = Field(description="what went wrong, naming the field or object at fault")


class InvalidRequest(ApiError):
    problems: list[str] = Field(description="one per offending field: `field.path: what is wrong`")


class StaleResults(ApiError):
    """409 of a results batch that was entirely stale: nothing changed, each result says so."""

    outcomes: list[ResultOutcome]


ERROR_MODELS: list[type[BaseModel]] = [ApiError, InvalidRequest, StaleResults]


def error_doc(description: str, model: type[BaseModel] = ApiError) -> dict[str, Any]:
    """An error response for `responses=`, as JSON even where the success is text (/metrics)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# The answers every authenticated route can give, then those only some routes give.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: error_doc("no bearer token, or an unknown or revoked one"),
    403: error_doc("the token's role, or its queues, do not allow this"),
}


def error(status: int, description: str, model: type[BaseModel] = ApiError) -> dict[int | str, Any]:
    return {status: error_doc(description, model)}


# -------------------------------------------------------------- the handlers


async def _auth(_r: Request, exc: AuthError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)


async def _not_found(_r: Request, exc: NotFound) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=404)


async def _conflict(_r: Request, exc: StaleLease | InvalidTransition) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=409)


async def _store(_r: Request, exc: StoreError) -> JSONResponse:
    log.warning("store error: %s", exc)
    return JSONResponse({"error": f"store unavailable: {exc}"}, status_code=503)


async def _database(_r: Request, exc: OperationalError) -> JSONResponse:
    log.warning("database error: %s", exc.orig)
    return JSONResponse({"error": "database unavailable, retry"}, status_code=503)


async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for problem in exc.errors():
        ctx = problem.get("ctx", {})
        if problem.get("type") == "json_invalid":  # FastAPI's has the offset in its loc
            at = "".join(f" at char {p}" for p in problem.get("loc", ())[1:2])
            problems.append(f"body: not valid JSON ({ctx.get('error', 'invalid')}{at})")
            continue
        loc = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
        msg = problem.get("msg", "invalid")
        if ctx.get("pattern") == NO_NUL:
            msg = "must not contain a NUL character (\\x00)"
        problems.append(f"{loc}: {msg}" if loc else msg)
    return invalid_reply(problems)


async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own errors (no such path, method not allowed) in our shape.

    FastAPI answers a JSON body it cannot decode (not UTF-8, nested too deep for
    `json.loads`) with a bare 400; pydantic's parser, on the per-task routes, calls the same
    bodies invalid JSON (422). One answer for both, naming the body."""
    if isinstance(exc.__cause__, BodyTooLarge):  # FastAPI wraps what reading raised
        return JSONResponse({"error": str(exc.__cause__)}, status_code=413)
    if exc.status_code == 400 and exc.__cause__ is not None:
        return invalid_reply([f"body: not valid JSON ({_parse_failure(exc.__cause__)})"])
    return JSONResponse(
        {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
    )


def invalid_reply(problems: list[str]) -> JSONResponse:
    return JSONResponse({"error": "; ".join(problems), "problems": problems}, status_code=422)


def _parse_failure(cause: BaseException) -> str:
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 at byte {cause.start}"
    return type(cause).__name__


def add_error_handlers(app: FastAPI) -> None:
    """Map each exception to its status, for every route of `app`."""
    app.add_exception_handler(AuthError, _auth)  # type: ignore[arg-type]
    app.add_exception_handler(NotFound, _not_found)  # type: ignore[arg-type]
    app.add_exception_handler(StaleLease, _conflict)  # type: ignore[arg-type]
    app.add_exception_handler(InvalidTransition, _conflict)  # type: ignore[arg-type]
    app.add_exception_handler(StoreError, _store)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, _database)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]


# -------------------------------------------------------------- the OpenAPI document


def document_errors(app: FastAPI, models: list[type[BaseModel]], settings: Settings) -> None:
    """Put `models` into the OpenAPI document's components, where the per-task routes' bodies
    and `error_doc` point, and document the errors every route can give the same way: they
    come from the app-wide handlers and middleware, not from any one route."""
    generate = app.openapi
    invalid = error_doc(
        "a parameter or the body is invalid: `problems` names each field", InvalidRequest
    )
    too_large = error_doc(f"the body is over {settings.server.max_body_bytes} bytes")
    unavailable = error_doc("the database is unavailable: retry")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _, defs = models_json_schema(
                [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
            )
            known = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs.get("$defs", {}).items():
                known.setdefault(name, definition)
            for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's, never sent
                known.pop(name, None)
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    responses = operation.setdefault("responses", {})
                    if "requestBody" in operation or operation.get("parameters"):
                        responses["422"] = invalid
                    if "requestBody" in operation:
                        responses["413"] = too_large
                    responses["503"] = unavailable
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
