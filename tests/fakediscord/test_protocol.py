"""The fake at the wire level, without discord.py: raw websocket frames, raw REST requests, the rules module."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from . import DiscordError, FakeDiscord, Limits
from .rules import validate_message

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(heartbeat_interval_ms=1000) as fake:
        fake.add_guild("Raw Guild")
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    frame: dict[str, Any] = json.loads(msg.data)
    return frame


async def identify(ws: aiohttp.ClientWebSocketResponse, token: str = "t") -> list[dict[str, Any]]:
    assert (await recv(ws))["op"] == 10
    await ws.send_json({"op": 2, "d": {"token": token, "intents": 513, "properties": {}}})
    return [await recv(ws), await recv(ws)]


async def test_identify_heartbeat_resume_replay(fake: FakeDiscord, http: aiohttp.ClientSession) -> None:
    guild = next(iter(fake.world.guilds.values()))
    async with http.ws_connect(fake.gateway_url + "?v=10&encoding=json") as ws:
        ready, guild_create = await identify(ws)
        assert (ready["t"], ready["s"], guild_create["t"], guild_create["s"]) == ("READY", 1, "GUILD_CREATE", 2)
        d = ready["d"]
        assert d["user"]["id"] == str(fake.bot_user.id) and d["application"]["id"] == str(fake.application_id)
        assert d["guilds"] == [{"id": str(guild.id), "unavailable": True}]
        assert d["resume_gateway_url"] == fake.gateway_url + "/resume"
        g = guild_create["d"]
        assert g["owner_id"] == str(guild.owner_id) and g["member_count"] == len(g["members"]) == 3
        assert str(fake.bot_user.id) in {m["user"]["id"] for m in g["members"]}
        await ws.send_json({"op": 1, "d": 2})
        assert (await recv(ws))["op"] == 11
        await ws.send_json({"op": 8, "d": {"guild_id": str(guild.id), "query": "test", "limit": 0, "nonce": "n1"}})
        chunk = await recv(ws)
        assert chunk["t"] == "GUILD_MEMBERS_CHUNK" and chunk["s"] == 3 and chunk["d"]["nonce"] == "n1"
        assert [m["user"]["username"] for m in chunk["d"]["members"]] == ["tester"]
        await fake.dispatch_event("TYPING_START", {"channel_id": "1", "user_id": "2", "timestamp": 0})
        assert (await recv(ws))["s"] == 4
        await ws.close(code=4000)
    await fake.world.changes.wait_until(lambda: not fake.gateway.current.connected, 5)  # type: ignore[union-attr]
    await fake.dispatch_event("TYPING_START", {"channel_id": "1", "user_id": "3", "timestamp": 0})  # s=5, missed
    async with http.ws_connect(d["resume_gateway_url"] + "?v=10&encoding=json") as ws:
        assert (await recv(ws))["op"] == 10
        await ws.send_json({"op": 6, "d": {"token": "t", "session_id": d["session_id"], "seq": 3}})
        replayed = [await recv(ws) for _ in range(3)]
        assert [(f["s"], f["t"]) for f in replayed] == [(4, "TYPING_START"), (5, "TYPING_START"), (6, "RESUMED")]
    async with http.ws_connect(fake.gateway_url) as ws:
        assert (await recv(ws))["op"] == 10
        await ws.send_json({"op": 6, "d": {"token": "t", "session_id": "nope", "seq": 1}})
        assert await recv(ws) == {"op": 9, "d": False, "s": None, "t": None}
        await ws.send_json({"op": 3, "d": {}})  # not identified
        assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.CLOSE and ws.close_code == 4003


async def test_zlib_stream_frames(fake: FakeDiscord, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(fake.gateway_url + "?v=10&encoding=json&compress=zlib-stream") as ws:
        inflate = zlib.decompressobj()
        hello = await ws.receive(timeout=5)
        assert hello.type is aiohttp.WSMsgType.BINARY and hello.data.endswith(b"\x00\x00\xff\xff")
        assert json.loads(inflate.decompress(hello.data))["op"] == 10
        await ws.send_json({"op": 2, "d": {"token": "t", "intents": 0, "properties": {}}})
        ready = json.loads(inflate.decompress((await ws.receive(timeout=5)).data))  # same stream context
        assert ready["t"] == "READY"


async def test_token_is_enforced_when_configured(http: aiohttp.ClientSession) -> None:
    async with FakeDiscord(token="secret") as fake:
        async with http.get(fake.api_base + "/users/@me") as resp:
            assert resp.status == 401
        async with http.get(fake.api_base + "/users/@me", headers={"Authorization": "Bot secret"}) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
        async with http.ws_connect(fake.gateway_url) as ws:
            await recv(ws)
            await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 0, "properties": {}}})
            assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.CLOSE and ws.close_code == 4004


async def test_rate_limit_response_shape(fake: FakeDiscord, http: aiohttp.ClientSession) -> None:
    fake.rate_limit("GET", r"^/users/@me$", times=1, retry_after=1.5, is_global=True)
    async with http.get(fake.api_base + "/users/@me") as resp:
        assert resp.status == 429
        assert await resp.json() == {"message": "You are being rate limited.", "retry_after": 1.5, "global": True}
        h = resp.headers
        assert h["Retry-After"] == "2" and h["X-RateLimit-Remaining"] == "0" and h["X-RateLimit-Scope"] == "user"
        assert h["X-RateLimit-Global"] == "true" and float(h["X-RateLimit-Reset-After"]) == 1.5 and h["Via"]
    async with http.get(fake.api_base + "/users/@me") as resp:
        assert resp.status == 200


async def test_channel_message_files_cdn_edit_delete(fake: FakeDiscord, http: aiohttp.ClientSession) -> None:
    channel = next(iter(fake.world.guilds.values())).first_text_channel()
    url = f"{fake.api_base}/channels/{channel.id}/messages"
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("payload_json", json.dumps({"content": "pic", "attachments": [{"id": 0, "filename": "a.png"}]}))
    form.add_field("files[0]", b"\x89PNG-bytes", filename="a.png", content_type="application/octet-stream")
    async with http.post(url, data=form) as resp:
        msg = await resp.json()
    (attachment,) = msg["attachments"]
    async with http.get(attachment["url"]) as resp:
        assert await resp.read() == b"\x89PNG-bytes" and resp.content_type == "image/png"
    async with http.patch(f"{url}/{msg['id']}", json={"content": "edited", "attachments": []}) as resp:
        edited = await resp.json()
    assert edited["content"] == "edited" and edited["attachments"] == [] and edited["edited_timestamp"]
    async with http.delete(f"{url}/{msg['id']}") as resp:
        assert resp.status == 204
    async with http.get(f"{url}/{msg['id']}") as resp:
        assert (resp.status, (await resp.json())["code"]) == (404, 10008)
    async with http.post(f"{fake.api_base}/channels/1/messages", json={"content": "x"}) as resp:
        assert (resp.status, (await resp.json())["code"]) == (404, 10003)


async def test_interaction_rules_without_a_bot(fake: FakeDiscord, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(fake.gateway_url) as ws:
        await identify(ws)
        rec = await fake.dispatch_slash("anything", {"n": 3})
        assert (await recv(ws))["d"]["data"]["options"] == [{"name": "n", "type": 4, "value": 3}]
        hook = f"{fake.api_base}/webhooks/{fake.application_id}/{rec.token}"
        async with http.post(hook, json={"content": "too early"}) as resp:
            assert (resp.status, (await resp.json())["code"]) == (404, 10015)
        async with http.post(
            f"{fake.api_base}/webhooks/{fake.application_id}/bad-token", json={"content": "x"}
        ) as resp:
            assert (resp.status, (await resp.json())["code"]) == (401, 50027)
        fake.advance_time(3.5)
        assert rec.failed
        async with http.post(f"{fake.api_base}/interactions/{rec.id}/{rec.token}/callback", json={"type": 5}) as resp:
            assert await resp.json() == {"message": "Unknown interaction", "code": 10062}
        assert [r.status for r in rec.requests] == [404, 404]


def test_message_limits() -> None:
    limits = Limits()

    def errors(body: dict[str, Any], files: int = 0) -> dict[str, Any]:
        from .state import UploadedFile

        uploads = [UploadedFile(f"files[{i}]", "f", "x", b"") for i in range(files)]
        with pytest.raises(DiscordError) as caught:
            validate_message(body, uploads, limits, creating=True)
        assert caught.value.status == 400
        found: dict[str, Any] = caught.value.body.get("errors", caught.value.body)
        return found

    fields = [{"name": "n", "value": "v"}] * 26
    assert "fields" in errors({"embeds": [{"fields": fields}]})["embeds"]["0"]
    big_field = [{"name": "n" * 257, "value": "v" * 1025}]
    assert set(errors({"embeds": [{"fields": big_field}]})["embeds"]["0"]["fields"]["0"]) == {"name", "value"}
    e = errors({"embeds": [{"title": "t" * 257, "footer": {"text": "f" * 2049}, "author": {"name": "a" * 257}}]})
    assert set(e["embeds"]["0"]) == {"title", "footer", "author"}
    assert "_errors" in errors({"embeds": [{"title": "t"}] * 11})["embeds"]
    assert "attachments" in errors({"content": "x"}, files=11)
    select_and_button = {"type": 1, "components": [{"type": 3, "custom_id": "s"}, {"type": 2, "custom_id": "b"}]}
    assert "components" in errors({"components": [select_and_button]})
    row = {"type": 1, "components": [{"type": 2, "custom_id": f"b{i}"} for i in range(6)]}
    assert "components" in errors({"components": [row]})["components"]["0"]
    assert errors({"content": ""}) == {"message": "Cannot send an empty message", "code": 50006}
    validate_message({"content": "x" * 2000, "embeds": [{"description": "d" * 4096}]}, [], limits, creating=True)
