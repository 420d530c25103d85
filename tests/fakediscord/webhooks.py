"""Interaction callbacks and the interaction webhook (follow-ups, ``@original`` and follow-up edits).

Discord's rules enforced here:

* the callback must arrive within ``ack_timeout`` (3 s) of the interaction, else ``404 10062 Unknown interaction``
  (and the record is marked failed); a second callback gets ``400 40060``;
* the webhook token works only after the callback and for ``token_lifetime`` (15 min) after the interaction,
  else ``401 50027 Invalid Webhook Token`` (before the callback: ``404 10015 Unknown Webhook``);
* message limits (``rules.validate_message``) and the upload limit (413) on every message-bearing request.

Every request that reaches a known interaction is recorded on its ``InteractionRecord``, rejected ones too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import payloads
from .bodies import json_response, read_body
from .rules import DiscordError, check_file_sizes, unknown, validate_message
from .state import InteractionRecord, RequestKind, SentRequest, UploadedFile
from .world import World

# Which callback types each interaction type accepts (2 command, 3 component, 4 autocomplete, 5 modal submit).
ALLOWED_CALLBACKS = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}
Outcome = tuple[int, Any, int | None]  # status, response body, message id


class InteractionRoutes:
    def __init__(self, world: World) -> None:
        self.world = world

    def register(self, router: web.UrlDispatcher, api: str) -> None:
        router.add_post(api + "/interactions/{interaction_id}/{token}/callback", self.callback)
        router.add_post(api + "/webhooks/{app_id}/{token}", self.followup)
        message = api + "/webhooks/{app_id}/{token}/messages/{message_id}"
        router.add_get(message, self.get_message)
        router.add_patch(message, self.edit_message)
        router.add_delete(message, self.delete_message)

    async def _recorded(
        self,
        record: InteractionRecord,
        kind: RequestKind,
        request: web.Request,
        payload: dict[str, Any] | None,
        files: list[UploadedFile],
        action: Callable[[], Awaitable[Outcome]],
    ) -> web.Response:
        """Run ``action`` and record the request (with its status) on the interaction, even when rejected."""
        try:
            status, body, message_id = await action()
        except DiscordError as exc:
            status, body, message_id = exc.status, exc.body, None
        sent = SentRequest(
            kind, request.method, request.path, status, payload, files, body, message_id, self.world.clock.now()
        )
        record.add_request(sent)
        return json_response(status=status, body=body)

    # -- helpers -------------------------------------------------------------------------------------

    def _new_message(
        self, record: InteractionRecord, body: dict[str, Any], files: list[UploadedFile], flags: int
    ) -> dict[str, Any]:
        world = self.world
        channel_id = record.channel_id or 0
        user = record.payload.get("member", {}).get("user") or record.payload.get("user")
        metadata: dict[str, Any] = {
            "id": str(record.id),
            "type": record.type,
            "user": user,
            "authorizing_integration_owners": record.payload.get("authorizing_integration_owners", {}),
        }
        if record.type == 2:
            metadata["name"] = record.payload["data"]["name"]
        msg = payloads.message(
            message_id=world.ids.next(),
            channel_id=channel_id,
            guild_id=record.guild_id,
            author=world.bot_user,
            body={**body, "flags": flags},
            attachments=world.attachments_for(body, files, channel_id, None) or [],
            timestamp=world.clock.iso_now(),
            message_type=20 if record.type == 2 else 0,
            application_id=world.application_id,
            interaction_metadata=metadata,
        )
        return world.store_message(msg)

    def _check_message(
        self,
        record: InteractionRecord,
        body: dict[str, Any],
        files: list[UploadedFile],
        *,
        creating: bool,
        prefix: tuple[str, ...] = (),
    ) -> None:
        check_file_sizes(files, self.world.file_limit(record.guild_id))
        validate_message(body, files, self.world.limits, creating=creating, prefix=prefix)

    def _edit(
        self, record: InteractionRecord, msg: dict[str, Any], body: dict[str, Any], files: list[UploadedFile]
    ) -> None:
        attachments = self.world.attachments_for(body, files, int(msg["channel_id"]), msg["attachments"])
        payloads.apply_edit(msg, body, attachments, self.world.clock.iso_now())
        self.world.changes.notify()

    # -- callback ------------------------------------------------------------------------------------

    async def callback(self, request: web.Request) -> web.Response:
        try:
            record = self.world.interactions[int(request.match_info["interaction_id"])]
        except (KeyError, ValueError):
            raise unknown("interaction", 10062) from None
        if record.token != request.match_info["token"]:
            raise unknown("interaction", 10062)
        payload, files = await read_body(request)
        return await self._recorded(
            record, "callback", request, payload, files, lambda: self._ack(record, payload or {}, files)
        )

    async def _ack(self, record: InteractionRecord, payload: dict[str, Any], files: list[UploadedFile]) -> Outcome:
        world = self.world
        if world.ack_expired(record):
            raise unknown("interaction", 10062)
        if record.acked:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        kind = payload.get("type")
        data = payload.get("data") or {}
        if kind not in ALLOWED_CALLBACKS.get(record.type, set()):
            raise DiscordError(
                400,
                50035,
                "Invalid Form Body",
                {
                    "type": {
                        "_errors": [
                            {
                                "code": "INTERACTION_RESPONSE_TYPE_INVALID",
                                "message": "Interaction response type is invalid",
                            }
                        ]
                    }
                },
            )
        msg: dict[str, Any] | None = None
        if kind == 4:
            self._check_message(record, data, files, creating=True, prefix=("data",))
            msg = self._new_message(record, data, files, int(data.get("flags") or 0))
            record.original_message_id = int(msg["id"])
        elif kind == 5:
            msg = self._new_message(
                record, {"content": ""}, [], (int(data.get("flags") or 0) & payloads.EPHEMERAL) | payloads.LOADING
            )
            record.original_message_id = int(msg["id"])
        elif kind in (6, 7):
            record.original_message_id = record.target_message_id
            if kind == 7:
                self._check_message(record, data, files, creating=False, prefix=("data",))
                if record.target_message_id is None:
                    raise unknown("Message", 10008)
                msg = world.message(record.target_message_id)
                self._edit(record, msg, data, files)
        elif kind == 8:
            choices = data.get("choices") or []
            if len(choices) > world.limits.autocomplete_choices:
                raise DiscordError(
                    400,
                    50035,
                    "Invalid Form Body",
                    {
                        "data": {
                            "choices": {
                                "_errors": [
                                    {
                                        "code": "BASE_TYPE_MAX_LENGTH",
                                        "message": f"Must be {world.limits.autocomplete_choices} or fewer in length.",
                                    }
                                ]
                            }
                        }
                    },
                )
            record.choices = choices
        elif kind == 9:
            if not data.get("custom_id") or not data.get("title") or not 1 <= len(data.get("components") or []) <= 5:
                raise DiscordError(
                    400,
                    50035,
                    "Invalid Form Body",
                    {
                        "data": {
                            "_errors": [
                                {
                                    "code": "MODAL_INVALID",
                                    "message": "A modal needs a custom_id, a title and 1 to 5 components",
                                }
                            ]
                        }
                    },
                )
            record.modal = data
        record.status, record.ack_type = "acked", kind
        world.changes.notify()
        info: dict[str, Any] = {"id": str(record.id), "type": record.type}
        resource: dict[str, Any] = {"type": kind}
        if msg is not None:
            info |= {
                "response_message_id": msg["id"],
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(msg["flags"] & payloads.EPHEMERAL),
            }
            resource["message"] = msg
        return 200, {"interaction": info, "resource": resource}, int(msg["id"]) if msg else None

    # -- webhook -------------------------------------------------------------------------------------

    def _record_for(self, request: web.Request) -> InteractionRecord:
        world = self.world
        if request.match_info["app_id"] != str(world.application_id):
            raise unknown("Webhook", 10015)
        record = world.interactions_by_token.get(request.match_info["token"])
        if record is None:
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        return record

    def _check_token(self, record: InteractionRecord) -> None:
        if self.world.token_expired(record):
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        self.world.ack_expired(record)
        if not record.acked:
            raise unknown("Webhook", 10015)

    def _resolve(self, record: InteractionRecord, message_id: str) -> dict[str, Any]:
        if message_id == "@original":
            if record.original_message_id is None:
                raise unknown("Message", 10008)
            return self.world.message(record.original_message_id)
        mid = int(message_id) if message_id.isdigit() else -1
        if mid not in record.message_ids and mid != record.original_message_id:
            raise unknown("Message", 10008)
        return self.world.message(mid)

    async def followup(self, request: web.Request) -> web.Response:
        record = self._record_for(request)
        payload, files = await read_body(request)

        async def action() -> Outcome:
            self._check_token(record)
            body = payload or {}
            self._check_message(record, body, files, creating=True)
            original = self.world.messages.get(record.original_message_id or 0)
            if record.ack_type == 5 and original is not None and original["flags"] & payloads.LOADING:
                # The first follow-up after a deferred response replaces the "thinking…" message.
                msg = original
                self._edit(record, msg, body, files)
            else:
                flags = int(body.get("flags") or 0) & (payloads.EPHEMERAL | 4 | 4096 | payloads.COMPONENTS_V2)
                msg = self._new_message(record, body, files, flags)
                record.message_ids.append(int(msg["id"]))
            if request.query.get("wait") in ("0", "false"):
                return 204, None, int(msg["id"])
            return 200, msg, int(msg["id"])

        return await self._recorded(record, "followup", request, payload, files, action)

    async def get_message(self, request: web.Request) -> web.Response:
        record = self._record_for(request)

        async def action() -> Outcome:
            self._check_token(record)
            msg = self._resolve(record, request.match_info["message_id"])
            return 200, msg, int(msg["id"])

        return await self._recorded(record, "get", request, None, [], action)

    async def edit_message(self, request: web.Request) -> web.Response:
        record = self._record_for(request)
        payload, files = await read_body(request)

        async def action() -> Outcome:
            self._check_token(record)
            msg = self._resolve(record, request.match_info["message_id"])
            body = payload or {}
            self._check_message(record, body, files, creating=False)
            self._edit(record, msg, body, files)
            return 200, msg, int(msg["id"])

        return await self._recorded(record, "edit", request, payload, files, action)

    async def delete_message(self, request: web.Request) -> web.Response:
        record = self._record_for(request)

        async def action() -> Outcome:
            self._check_token(record)
            msg = self._resolve(record, request.match_info["message_id"])
            self.world.delete_message(int(msg["id"]))
            return 204, None, int(msg["id"])

        return await self._recorded(record, "delete", request, None, [], action)
