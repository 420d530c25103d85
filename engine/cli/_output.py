"""What the CLI writes: progress on stderr (tqdm bars and lines), result records, and JSON files written atomically."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from engine.files import atomic_write_bytes

__all__ = ["Progress", "atomic_write_json", "jsonable", "notice", "now", "print_json", "result_record", "vl_summary"]


class Progress:
    """Progress on stderr: lines that stay, and a tqdm bar per stage or cell.

    Lines are printed whenever ``enabled`` (also when stderr is not a terminal, where they are the whole log). Bars
    are drawn only on a terminal (tqdm's ``disable=None``), and never when ``bars`` is false (``--json``) or when
    not ``enabled`` (``--quiet``). ``enabled=False`` prints nothing.
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, *, bars: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.bars = enabled and bars

    def line(self, text: str) -> None:
        """A line that stays (written above any bar)."""
        if not self.enabled:
            return
        tqdm.write(text, file=self.stream)
        self.stream.flush()

    def bar(self, desc: str, total: int | None = None, unit: str = "it") -> tqdm:
        """A bar that disappears when closed (use it as a context manager)."""
        return tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False, dynamic_ncols=True,
                    disable=None if self.bars else True)

    @contextmanager
    def steps(self, desc: str) -> Iterator[Callable[..., None]]:
        """A bar of denoising steps; yields the pipeline's step callback ``(step, total, ...)``."""
        with self.bar(desc, unit="step") as bar:
            def on_step(step: int, total: int, *_args: Any) -> None:
                bar.total = total
                bar.update(step - bar.n)

            yield on_step


def notice(text: str) -> None:
    """Loud notices (demo mode) go to stderr even with --quiet."""
    print(text, file=sys.stderr, flush=True)


def jsonable(value: Any) -> Any:
    """Make a record JSON-safe: tensors to shapes, enums to values, NaN/inf to None, paths to str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "value") and isinstance(value.value, (str, int)):
        return value.value
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return {"tensor_shape": list(value.shape)}
    if isinstance(value, Path):
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_json(path: Path, record: Any) -> None:
    """Write ``record`` (made :func:`jsonable`) as indented UTF-8 JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(jsonable(record), indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def print_json(record: Any) -> None:
    """``--json``: the record on stdout."""
    print(json.dumps(jsonable(record), indent=2, ensure_ascii=False))


def result_record(result: Any, **extra: Any) -> dict[str, Any]:
    """The JSON record of a :class:`~engine.types.StylizeResult` (what the PNG's ``zvl`` chunk and ``--json`` hold)."""
    rec = {
        "format": "zvl-result/1",
        "created_at": now(),
        "params": dict(result.params),
        "seeds": list(result.seeds),
        "timings": dict(result.timings or {}),
        "vl": vl_summary(result.vl),
        "stats": dict(result.stats or {}),
    }
    rec.update(extra)
    return jsonable(rec)


def vl_summary(vl: Any) -> dict[str, Any] | None:
    """The extraction's metadata with its per-position ``kinds`` list (1000+ entries) replaced by counts."""
    if vl is None:
        return None
    meta = vl.metadata() if hasattr(vl, "metadata") else dict(vl)
    kinds = meta.pop("kinds", None)
    if kinds is not None:
        counts: dict[str, int] = {}
        for k in kinds:
            counts[str(k)] = counts.get(str(k), 0) + 1
        meta["position_kinds"] = counts
    return meta
