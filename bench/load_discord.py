"""Load on the real bot process through the fake Discord: N users sending M /stylize requests each.

    python bench/load_discord.py [--quick] [--users N] [--requests M] [--json PATH]

The bot runs as it does in production (``python -m bot run``, real discord.py, real sockets) on the tiny random
models (CPU, one torch thread, 64×64, 2 steps); ``tests.fakediscord.FakeDiscord`` plays Discord in this process and
enforces its rules (3-second acknowledgement, webhook tokens, message limits). Users start at random moments over a
short ramp and send their requests with a short think time between them, each with its own reference image (so every
job runs the VL model too). The run sets ``ZVL_MAX_JOBS_PER_USER`` to M and ``ZVL_MAX_JOBS_TOTAL`` to N×M, and the
cooldown to 0, unless told otherwise.

Reported:

* **lost** interactions: not acknowledged within 3 s, or acknowledged but neither delivered nor refused with a
  message by the end (must be 0). Refusals are counted by kind (per-user cap, queue full, cooldown, other), jobs that
  ended with a "❌ Failed" status separately, and results delivered more than once as duplicates.
* **acknowledgement latency** p50/p99: from the fake sending INTERACTION_CREATE to the bot's callback arriving at the
  fake (target p99 <= 250 ms).
* **event-loop lag** p50/p99 of the bot, measured from outside: discord.py's heartbeat thread schedules each
  heartbeat on the bot's event loop and waits for it before sleeping the next interval, so the gap between two
  heartbeats arriving at the fake is the interval plus the loop's lag at that moment (plus thread wake-up and the
  fake's own loop delay: an upper bound). The bot does not report loop lag itself (``/admin status`` has none).
  The interval is ``--heartbeat-ms`` (100 ms); the lag of an idle bot is measured first for comparison.
* end-to-end time (dispatch to result) p50/p99 and throughput.

``--quick`` (or ``BENCH_QUICK=1``): 5 users × 2 requests (the test ``tests/e2e/test_load_quick.py`` runs that).
The main figure, the acknowledgement p99, is printed last; the exit status is 1 when anything was lost, a result
was delivered twice, or the bot did not exit cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as common  # noqa: E402
from tests.e2e.botproc import BotProcess, ephemeral_texts, result_request, tiny_settings  # noqa: E402
from tests.fakediscord import FakeDiscord, InteractionRecord  # noqa: E402

OP_HEARTBEAT = 1
ACK_TARGET_MS = 250.0


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def reference(i: int, j: int) -> bytes:
    """A distinct small reference per request (so every job reads its reference with the VL model)."""
    from PIL import Image

    rng = random.Random(i * 7919 + j)
    image = Image.new("RGB", (48, 40), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    for _ in range(12):
        x, y = rng.randrange(48), rng.randrange(40)
        image.putpixel((x, y), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class HeartbeatClock:
    """Records when each heartbeat frame reaches the fake (wraps the gateway's frame handler)."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.times: list[tuple[float, int]] = []  # (monotonic time, connection id)
        gateway = fake.gateway
        original = gateway._on_frame

        async def on_frame(conn: Any, raw: str | bytes) -> None:
            try:
                if json.loads(raw).get("op") == OP_HEARTBEAT:
                    self.times.append((time.monotonic(), id(conn)))
            except (ValueError, AttributeError):
                pass
            await original(conn, raw)

        gateway._on_frame = on_frame  # type: ignore[method-assign]

    def lags(self, start: float, end: float, interval: float) -> list[float]:
        """Seconds each heartbeat came later than the interval, for heartbeats arriving in [start, end]."""
        out: list[float] = []
        last: dict[int, float] = {}
        for at, conn in self.times:
            prev = last.get(conn)
            last[conn] = at
            if prev is not None and start <= prev and at <= end:
                out.append(max(0.0, at - prev - interval))
        return out


def classify(rec: InteractionRecord) -> str:
    """``delivered`` / ``duplicate`` / ``refused:<kind>`` / ``failed_job`` / ``unacknowledged`` / ``no_outcome``."""
    if rec.failed or rec.callback is None:
        return "unacknowledged"
    with_files = [r for r in rec.accepted if any(f.filename.startswith("zvl-") for f in r.files)]
    if len(with_files) > 1:
        return "duplicate"
    if with_files:
        return "delivered"
    texts = ephemeral_texts(rec)
    if texts:
        text = texts[-1]
        if "the limit is" in text:
            return "refused:user_cap"
        if "queue is full" in text:
            return "refused:queue_full"
        if "Slow down" in text:
            return "refused:cooldown"
        return "refused:other"
    if any((r.content or "").startswith("❌") for r in rec.edits):
        return "failed_job"
    return "no_outcome"


async def run(args: Any) -> tuple[dict[str, Any], int]:
    from engine.models.tiny import make_tiny

    work = Path(tempfile.mkdtemp(prefix="zvl-load-discord-"))
    t0 = time.monotonic()
    models = Path(args.models) if args.models else work / "tiny"
    if not args.models:
        paths = make_tiny(models)
    else:
        paths = {"zimage": models / "zimage", "qwen3vl": models / "qwen3vl"}
    print(f"tiny models ready in {time.monotonic() - t0:.1f} s ({models})", flush=True)

    rng = random.Random(args.seed)
    interval = args.heartbeat_ms / 1000
    async with FakeDiscord(heartbeat_interval_ms=args.heartbeat_ms) as fake:
        beats = HeartbeatClock(fake)
        guild = fake.add_guild("load")
        admin = fake.add_user("load-admin")
        fake.add_member(guild.id, admin.id)
        users = []
        for i in range(args.users):
            user = fake.add_user(f"user{i:03d}")
            fake.add_member(guild.id, user.id)
            users.append(user)
        settings = tiny_settings(paths["zimage"], paths["qwen3vl"], owner_ids=[admin.id],
                                 max_jobs_per_user=args.max_jobs_per_user or args.requests,
                                 max_jobs_total=args.max_jobs_total or max(50, args.users * args.requests),
                                 cooldown_s=args.cooldown, log_level="WARNING" if not args.verbose else "INFO")
        bot = BotProcess(fake, work / "bot", settings, name="load-bot", probe_guild_id=guild.id)
        rc: int | None = None
        try:
            await bot.start()
            print(f"bot process ready in {bot.start_seconds[-1]:.1f} s (log: {bot.log_path})", flush=True)
            # Warm the models once (lazy loading is not what this measures), then the idle loop-lag baseline.
            warm = await fake.dispatch_slash("stylize", {"image": fake.add_attachment(reference(-1, 0), "w.png")},
                                             guild_id=guild.id, user_id=admin.id)
            await warm.wait_until(lambda r: result_request(r) is not None, timeout=300)
            idle_start = time.monotonic()
            await asyncio.sleep(args.idle_s)
            idle_lags = beats.lags(idle_start, time.monotonic(), interval)

            records: list[InteractionRecord] = []
            dispatched_at: dict[int, float] = {}

            async def user_task(i: int) -> None:
                await asyncio.sleep(rng.uniform(0, args.ramp_s))
                for j in range(args.requests):
                    ref = fake.add_attachment(reference(i, j), f"ref-{i}-{j}.png", "image/png")
                    rec = await fake.dispatch_slash(
                        "stylize", {"image": ref, "prompt": f"user {i} request {j}", "seed": i * 1000 + j},
                        guild_id=guild.id, user_id=users[i].id)
                    dispatched_at[rec.id] = time.monotonic()
                    records.append(rec)
                    await asyncio.sleep(rng.uniform(args.think_min_s, args.think_max_s))

            load_start = time.monotonic()
            await asyncio.gather(*(user_task(i) for i in range(args.users)))
            all_sent = time.monotonic()
            try:
                await fake.world.changes.wait_until(
                    lambda: all(classify(r) != "no_outcome" for r in records), args.timeout_s, "every outcome")
            except TimeoutError:
                print(f"warning: not every request had an outcome after {args.timeout_s:.0f} s", flush=True)
            load_end = time.monotonic()
            busy_lags = beats.lags(load_start, load_end, interval)

            status = {}
            try:
                srec = await fake.dispatch_slash("admin", {}, subcommand="status", guild_id=guild.id,
                                                 user_id=admin.id)
                embed = (await srec.wait_ack(5)).data["embeds"][0]
                status = {f["name"]: f["value"] for f in embed["fields"]}
            except Exception as exc:  # noqa: BLE001 - the status is a cross-check only
                print(f"warning: /admin status failed: {exc!r}", flush=True)
        finally:
            try:
                rc = await bot.stop()
            except TimeoutError as exc:
                print(f"error: {exc}", flush=True)
                rc = -1

    kinds: dict[str, int] = {}
    for rec in records:
        kind = classify(rec)
        kinds[kind] = kinds.get(kind, 0) + 1
    acks = [(r.callback.at - r.created_at) * 1000 for r in records if r.callback is not None]
    ends = []
    for rec in records:
        final = result_request(rec)
        if final is not None:
            ends.append(final.at - rec.created_at)
    lost = kinds.get("unacknowledged", 0) + kinds.get("no_outcome", 0)
    refused = {k.split(":", 1)[1]: v for k, v in kinds.items() if k.startswith("refused:")}
    results = {
        "machine": common.machine(),
        "users": args.users, "requests_per_user": args.requests, "interactions": len(records),
        "settings": {k: str(v) for k, v in settings.items() if k not in ("zimage_path", "vl_path")},
        "outcomes": kinds, "lost": lost, "refused": refused, "failed_jobs": kinds.get("failed_job", 0),
        "duplicates": kinds.get("duplicate", 0),
        "ack_ms": {"p50": pct(acks, 50), "p99": pct(acks, 99), "max": max(acks, default=float("nan")),
                   "n": len(acks)},
        "end_to_end_s": {"p50": pct(ends, 50), "p99": pct(ends, 99), "max": max(ends, default=float("nan"))},
        "loop_lag_ms": {
            "idle": {"p50": pct(idle_lags, 50) * 1000, "p99": pct(idle_lags, 99) * 1000, "n": len(idle_lags)},
            "load": {"p50": pct(busy_lags, 50) * 1000, "p99": pct(busy_lags, 99) * 1000,
                     "max": max(busy_lags, default=float("nan")) * 1000, "n": len(busy_lags)},
            "heartbeat_interval_ms": args.heartbeat_ms,
        },
        "seconds": {"sending": all_sent - load_start, "total": load_end - load_start},
        "throughput_jobs_per_s": len(ends) / max(1e-9, load_end - load_start),
        "admin_status": status, "bot_exit_status": rc, "bot_start_s": bot.start_seconds,
        "bot_log": str(bot.log_path),
    }
    bad = lost > 0 or results["duplicates"] > 0 or rc != 0
    return results, 1 if bad else 0


def report(r: dict[str, Any]) -> str:
    m = r["machine"]
    ack, lag, e2e = r["ack_ms"], r["loop_lag_ms"], r["end_to_end_s"]
    refused = ", ".join(f"{k} {v}" for k, v in sorted(r["refused"].items())) or "none"
    lines = [
        f"machine: {common.describe(m)}",
        f"run: {r['users']} users x {r['requests_per_user']} requests = {r['interactions']} /stylize interactions "
        f"(sent over {r['seconds']['sending']:.1f} s, all settled after {r['seconds']['total']:.1f} s)",
        f"outcomes: {json.dumps(r['outcomes'], sort_keys=True)}",
        f"lost (unacknowledged or no outcome): {r['lost']}; refused: {refused}; failed jobs: {r['failed_jobs']}; "
        f"duplicate deliveries: {r['duplicates']}",
        f"acknowledgement latency: p50 {ack['p50']:.1f} ms, p99 {ack['p99']:.1f} ms, max {ack['max']:.1f} ms "
        f"(n={ack['n']}; target p99 <= {ACK_TARGET_MS:.0f} ms)",
        f"event-loop lag (heartbeat jitter, {lag['heartbeat_interval_ms']} ms interval; upper bound): under load "
        f"p50 {lag['load']['p50']:.1f} ms, p99 {lag['load']['p99']:.1f} ms, max {lag['load']['max']:.1f} ms "
        f"(n={lag['load']['n']}); idle p50 {lag['idle']['p50']:.1f} ms, p99 {lag['idle']['p99']:.1f} ms",
        f"end to end (dispatch to result): p50 {e2e['p50']:.2f} s, p99 {e2e['p99']:.2f} s; throughput "
        f"{r['throughput_jobs_per_s']:.2f} jobs/s",
        f"bot: /admin status queue '{r['admin_status'].get('Queue', '?')}', done/failed/cancelled "
        f"'{r['admin_status'].get('Done / failed / cancelled', '?')}'; exit status after SIGTERM "
        f"{r['bot_exit_status']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=None, help="simulated users (default 50; quick 5)")
    p.add_argument("--requests", type=int, default=None, help="requests per user (default 4; quick 2)")
    p.add_argument("--max-jobs-per-user", type=int, default=None, help="ZVL_MAX_JOBS_PER_USER (default: --requests)")
    p.add_argument("--max-jobs-total", type=int, default=None, help="ZVL_MAX_JOBS_TOTAL (default: users x requests)")
    p.add_argument("--cooldown", type=float, default=0.0, help="ZVL_COOLDOWN_S (default 0)")
    p.add_argument("--ramp-s", type=float, default=None, help="users start within this many seconds (default 5)")
    p.add_argument("--think-min-s", type=float, default=0.1)
    p.add_argument("--think-max-s", type=float, default=0.6)
    p.add_argument("--heartbeat-ms", type=int, default=100, help="gateway heartbeat interval (loop-lag sampling)")
    p.add_argument("--idle-s", type=float, default=None, help="idle loop-lag baseline (default 3 s; quick 1 s)")
    p.add_argument("--timeout-s", type=float, default=None, help="give up waiting for outcomes (default 900 s)")
    p.add_argument("--models", default=None, help="existing tiny model folder (with zimage/ and qwen3vl/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="INFO logging in the bot's log file")
    args = common.parse(p, argv)
    args.users = args.users or (5 if args.quick else 50)
    args.requests = args.requests or (2 if args.quick else 4)
    args.ramp_s = args.ramp_s if args.ramp_s is not None else (1.0 if args.quick else 5.0)
    args.idle_s = args.idle_s if args.idle_s is not None else (1.0 if args.quick else 3.0)
    args.timeout_s = args.timeout_s or (300.0 if args.quick else 900.0)
    results, status = asyncio.run(run(args))
    print(report(results), flush=True)
    mode = "quick, " if args.quick else ""
    what = (f"ack p99 ms ({mode}{args.users} users x {args.requests} requests, real bot process, tiny models; "
            f"lost {results['lost']})")
    common.finish(common.figure("load_discord", what, results["ack_ms"]["p99"], digits=1), results, args.json)
    return status


if __name__ == "__main__":
    sys.exit(main())
