"""Discord's limits and error bodies: message/embed/component/attachment validation, file size, commands.

Validation raises ``DiscordError`` carrying the HTTP status and the exact JSON body Discord would send,
e.g. ``400 {"message": "Invalid Form Body", "code": 50035, "errors": {"content": {"_errors": [...]}}}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .state import MIB, UploadedFile

Path = tuple[str, ...]


@dataclass(frozen=True)
class Limits:
    content: int = 2000
    embeds: int = 10
    embed_title: int = 256
    embed_description: int = 4096
    embed_fields: int = 25
    field_name: int = 256
    field_value: int = 1024
    footer_text: int = 2048
    author_name: int = 256
    embed_total: int = 6000
    action_rows: int = 5
    row_buttons: int = 5
    custom_id: int = 100
    v2_components: int = 40
    attachments: int = 10
    file_size: int = 10 * MIB
    autocomplete_choices: int = 25


class DiscordError(Exception):
    """An API error response: HTTP ``status`` and Discord's JSON ``body``."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.body: dict[str, Any] = {"message": message, "code": code}
        if errors:
            self.body["errors"] = errors


def unknown(what: str, code: int) -> DiscordError:
    """404 ``Unknown <what>`` (10003 channel, 10004 guild, 10008 message, 10015 webhook, 10062 interaction)."""
    return DiscordError(404, code, f"Unknown {what}")


class FormErrors:
    """Collects ``_errors`` entries under nested paths, in Discord's Invalid Form Body shape."""

    def __init__(self, prefix: Path = ()) -> None:
        self.prefix = prefix
        self.tree: dict[str, Any] = {}

    def add(self, path: Path, code: str, message: str) -> None:
        node = self.tree
        for key in self.prefix + path:
            node = node.setdefault(key, {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def max_length(self, path: Path, value: Any, limit: int) -> None:
        if value is not None and len(value) > limit:
            self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def raise_if_any(self) -> None:
        if self.tree:
            raise DiscordError(400, 50035, "Invalid Form Body", self.tree)


def _embed_size(embed: dict[str, Any]) -> int:
    size = len(embed.get("title") or "") + len(embed.get("description") or "")
    size += len((embed.get("footer") or {}).get("text") or "") + len((embed.get("author") or {}).get("name") or "")
    for f in embed.get("fields") or []:
        size += len(f.get("name") or "") + len(f.get("value") or "")
    return size


def _check_embeds(embeds: list[dict[str, Any]], errors: FormErrors, limits: Limits) -> None:
    if len(embeds) > limits.embeds:
        errors.add(("embeds",), "BASE_TYPE_MAX_LENGTH", f"Must be {limits.embeds} or fewer in length.")
        return
    for i, embed in enumerate(embeds):
        at: Path = ("embeds", str(i))
        errors.max_length((*at, "title"), embed.get("title"), limits.embed_title)
        errors.max_length((*at, "description"), embed.get("description"), limits.embed_description)
        errors.max_length((*at, "footer", "text"), (embed.get("footer") or {}).get("text"), limits.footer_text)
        errors.max_length((*at, "author", "name"), (embed.get("author") or {}).get("name"), limits.author_name)
        fields = embed.get("fields") or []
        if len(fields) > limits.embed_fields:
            errors.add((*at, "fields"), "BASE_TYPE_MAX_LENGTH", f"Must be {limits.embed_fields} or fewer in length.")
        for j, f in enumerate(fields[: limits.embed_fields]):
            errors.max_length((*at, "fields", str(j), "name"), f.get("name"), limits.field_name)
            errors.max_length((*at, "fields", str(j), "value"), f.get("value"), limits.field_value)
    if sum(_embed_size(e) for e in embeds) > limits.embed_total:
        errors.add(("embeds",), "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {limits.embed_total}")


def _walk_components(components: list[dict[str, Any]], at: Path) -> list[tuple[Path, dict[str, Any]]]:
    found: list[tuple[Path, dict[str, Any]]] = []
    for i, comp in enumerate(components):
        here = (*at, str(i))
        found.append((here, comp))
        found.extend(_walk_components(comp.get("components") or [], (*here, "components")))
        if isinstance(comp.get("accessory"), dict):
            found.append(((*here, "accessory"), comp["accessory"]))
    return found


def _check_components(components: list[dict[str, Any]], v2: bool, errors: FormErrors, limits: Limits) -> None:
    if not v2 and len(components) > limits.action_rows:
        errors.add(("components",), "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {limits.action_rows} in length.")
    seen: set[str] = set()
    everything = _walk_components(components, ("components",))
    if v2 and len(everything) > limits.v2_components:
        errors.add(("components",), "COMPONENT_MAX_TOTAL_COMPONENTS_EXCEEDED", "Too many components.")
    for path, comp in everything:
        if comp.get("type") == 1:
            children = comp.get("components") or []
            if not children or len(children) > limits.row_buttons:
                errors.add(
                    (*path, "components"),
                    "BASE_TYPE_BAD_LENGTH",
                    f"Must be between 1 and {limits.row_buttons} in length.",
                )
            elif any(c.get("type") != 2 for c in children) and len(children) > 1:
                errors.add(
                    (*path, "components"),
                    "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                    "The specified component exceeds the maximum width",
                )
        elif not v2 and len(path) == 2:
            errors.add((*path, "type"), "UNION_TYPE_CHOICES", 'Value of field "type" must be one of (1,).')
        custom_id = comp.get("custom_id")
        if custom_id is not None:
            errors.max_length((*path, "custom_id"), custom_id, limits.custom_id)
            if custom_id in seen:
                errors.add(
                    (*path, "custom_id"), "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated"
                )
            seen.add(custom_id)


def validate_message(
    body: dict[str, Any],
    files: Sequence[UploadedFile],
    limits: Limits,
    *,
    creating: bool,
    prefix: Path = (),
) -> None:
    """Raise ``DiscordError`` (400) if a message create/edit body breaks Discord's limits."""
    errors = FormErrors(prefix)
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        errors.add(("content",), "BASE_TYPE_STRING", "Must be a string.")
    else:
        errors.max_length(("content",), content, limits.content)
    _check_embeds(list(body.get("embeds") or []), errors, limits)
    v2 = bool(int(body.get("flags") or 0) & (1 << 15))
    _check_components(list(body.get("components") or []), v2, errors, limits)
    attachments = body.get("attachments")
    count = max(len(files), len(attachments or []))
    if count > limits.attachments:
        errors.add(("attachments",), "BASE_TYPE_MAX_LENGTH", f"Must be {limits.attachments} or fewer in length.")
    errors.raise_if_any()
    if creating and not (
        content or body.get("embeds") or body.get("components") or files or body.get("sticker_ids") or body.get("poll")
    ):
        raise DiscordError(400, 50006, "Cannot send an empty message")


def check_file_sizes(files: Sequence[UploadedFile], limit: int) -> None:
    """Discord answers 413 when any uploaded file is over the (guild's) upload limit."""
    if any(f.size > limit for f in files):
        raise DiscordError(413, 40005, "Request entity too large")


_NAME = re.compile(r"^[-_'\w]{1,32}$")


def validate_commands(commands: Any) -> None:
    """Basic checks Discord makes on a bulk overwrite: names, descriptions, option counts, uniqueness."""
    errors = FormErrors()
    if not isinstance(commands, list):
        raise DiscordError(
            400, 50035, "Invalid Form Body", {"_errors": [{"code": "BASE_TYPE_ARRAY", "message": "Must be an array."}]}
        )
    names: set[tuple[str, int]] = set()
    for i, cmd in enumerate(commands):
        at: Path = (str(i),)
        name, kind = str(cmd.get("name", "")), int(cmd.get("type", 1))
        if kind == 1 and (not _NAME.match(name) or name != name.lower()):
            errors.add((*at, "name"), "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
        if (name, kind) in names:
            errors.add((*at, "name"), "APPLICATION_COMMANDS_DUPLICATE_NAME", "Application command names must be unique")
        names.add((name, kind))
        if kind == 1:
            errors.max_length((*at, "description"), cmd.get("description") or "", 100)
        _check_options(cmd.get("options") or [], (*at, "options"), errors)
    errors.raise_if_any()


def _check_options(options: list[dict[str, Any]], at: Path, errors: FormErrors) -> None:
    if len(options) > 25:
        errors.add(at, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    for i, opt in enumerate(options):
        name = str(opt.get("name", ""))
        if not _NAME.match(name) or name != name.lower():
            errors.add((*at, str(i), "name"), "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
        errors.max_length((*at, str(i), "description"), opt.get("description") or "", 100)
        errors.max_length((*at, str(i), "choices"), opt.get("choices"), 25)
        if opt.get("type") in (1, 2):
            _check_options(opt.get("options") or [], (*at, str(i), "options"), errors)
