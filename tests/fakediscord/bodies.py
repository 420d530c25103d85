"""Request bodies: JSON, or multipart with a ``payload_json`` part and ``files[n]`` parts (as discord.py sends)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import BodyPartReader, hdrs, web

from .rules import DiscordError
from .state import UploadedFile

MAX_PARTS = 64


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response with ``Content-Type: application/json`` exactly (discord.py compares it verbatim)."""
    if status == 204:
        return web.Response(status=204, headers=headers)
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(status=status, body=json.dumps(body).encode(), headers=all_headers)


def _bad_json() -> DiscordError:
    return DiscordError(400, 50109, "The request body contains invalid JSON.")


async def read_body(request: web.Request) -> tuple[dict[str, Any] | None, list[UploadedFile]]:
    """Decode a JSON or multipart request into ``(payload, files)``; an empty body gives ``(None, [])``."""
    if request.content_type.startswith("multipart/"):
        return await _read_multipart(request)
    raw = await request.read()
    if not raw:
        return None, []
    try:
        payload = json.loads(raw)
    except ValueError:
        raise _bad_json() from None
    if not isinstance(payload, (dict, list)):
        raise _bad_json()
    return payload, []  # type: ignore[return-value]


async def _read_multipart(request: web.Request) -> tuple[dict[str, Any] | None, list[UploadedFile]]:
    reader = await request.multipart()
    payload: dict[str, Any] | None = None
    files: list[UploadedFile] = []
    for _ in range(MAX_PARTS):
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            continue  # nested multipart: not something Discord clients send
        name = part.name or ""
        data = await part.read(decode=True)
        if name == "payload_json":
            try:
                payload = json.loads(bytes(data))
            except ValueError:
                raise _bad_json() from None
        elif name.startswith("files[") or name.startswith("file"):
            filename = part.filename or name
            ctype = part.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream")
            files.append(UploadedFile(name, filename, ctype, bytes(data)))
    else:
        raise DiscordError(
            400, 50035, "Invalid Form Body", {"_errors": [{"code": "TOO_MANY_PARTS", "message": "Too many parts."}]}
        )
    return payload, files
