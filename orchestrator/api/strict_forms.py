"""Multipart routes refuse what they would otherwise ignore: fields they do not have (a misspelt
option would silently take its default) and bodies that are not multipart, each with a suggestion."""

from __future__ import annotations

import difflib

from fastapi import Request, params
from fastapi.routing import APIRoute
from pydantic import BaseModel

from orchestrator.errors import InputError

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MAX_NAMED = 3  # unknown fields named in one refusal


def form_fields(route: APIRoute) -> frozenset[str]:
    """The multipart fields a route reads: its files and the fields of its form models."""
    names: set[str] = set()
    for param in route.dependant.body_params:
        kind = param.field_info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names.update(field.alias or name for name, field in kind.model_fields.items())
        else:
            names.add(param.alias)
    return frozenset(names)


def unknown_field(name: str, known: frozenset[str]) -> str:
    shown = name[:40]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"unknown field {shown!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


async def strict_form(request: Request) -> None:
    """A dependency of every route: on a route that takes multipart, InputError (422) for a body of
    another type or for a field the route does not read."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    if not any(isinstance(param.field_info, params.Form) for param in route.dependant.body_params):
        return  # File is a Form too
    known = form_fields(route)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type:  # no body at all: validation names the fields it lacks
        return
    if content_type not in FORM_TYPES:
        raise InputError(
            f"{request.url.path} takes multipart/form-data, not {content_type[:60]}: "
            "send files and options as form fields (curl -F target=@photo.jpg -F selector=one ...)"
        )
    unknown = sorted({name for name in (await request.form()) if name not in known})
    if unknown:
        problems = [unknown_field(name, known) for name in unknown[:MAX_NAMED]]
        more = f" and {len(unknown) - MAX_NAMED} more" if len(unknown) > MAX_NAMED else ""
        raise InputError("; ".join(problems) + more + f"; {request.url.path}'s fields are listed at /docs")
