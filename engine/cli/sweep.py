"""``python -m engine sweep``: a parameter sweep per prompt, one PNG per cell, metadata.json and a labelled grid;
every cell scored (scores.csv and a score chart beside the grid) unless ``--no-score``.

In ``sweep``, a value given as a flag also wins over the preset's own setting (``--sweep alpha --layer -6`` runs the
alpha preset at layer -6); settings from the environment or a profile do not (the preset is the more specific
choice). Every cell of every prompt is checked before any folder is made or any weights load.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.cli._common import (
    base_request,
    check_inputs,
    load_weights,
    make_pipeline,
    models_record,
    needed_components,
    prepare_models,
    quiet_libraries,
    reference_record,
    settings_from_args,
)
from engine.cli._errors import EXIT_OK, PROG, CliError, Interrupted, UsageError, one_line
from engine.cli._output import Progress, atomic_write_json, now, print_json
from engine.cli.sweep_run import CELL_FILE, SweepRun, prompt_dirname, run_sweep
from engine.cli.sweep_scores import CHART_FILE, CSV_FILE, SweepScorer, judge_of
from engine.sweep.plan import SweepPlan, plan_sweep
from engine.cli.refs import CliReferences, gather_references
from engine.types import style_weight_to_alpha

__all__ = ["cmd_sweep"]


def cmd_sweep(args: argparse.Namespace) -> int:
    """Plan every prompt's sweep, check every cell, load the models once, then run the prompts one after another."""
    progress = Progress(not args.quiet, bars=not args.json)
    _check_flags(args)
    overrides = _overrides(args)
    settings = settings_from_args(args, {})
    refs = gather_references(args, settings)  # several -i: each cell blends them all (--weights)
    reference = refs.images[0]
    sweep = _plan_prompts(args, settings, refs, overrides)
    settings = prepare_models(settings)
    quiet_libraries(args.debug)
    pipe = make_pipeline(settings)
    for _prompt, plan in sweep.plans:  # every cell is checked before any folder is made or any weights load
        for cell in plan.cells:
            check_inputs(pipe, cell.request, f"cell '{cell.label}': ")
    progress.line(f"sweep {sweep.preset}: {len(sweep.plans)} prompt(s), {sweep.total_cells} cells "
                  f"({sum(len(plan.baselines) for _, plan in sweep.plans)} baseline) -> {sweep.root}")
    sweep.prepare_folders()
    components = needed_components([c.request for _, plan in sweep.plans for c in plan.cells])
    if not args.no_score and "vl" not in components:
        components.append("vl")  # the judge is the same Qwen3-VL
    load_s = load_weights(pipe, settings, progress, components)
    sweep.score = not args.no_score
    if sweep.score:
        sweep.judge = _judge(pipe)
    header = {"overrides": {k: v for k, v in overrides.items() if v is not None},
              "models": models_record(settings, pipe), "model_load_seconds": round(load_s, 3),
              "command": [PROG, *sys.argv[1:]]}
    sweep.run(pipe, reference, header, progress, args.cell_size)
    if args.json:
        print_json(sweep.runs[0].record() if len(sweep.runs) == 1 else {"prompts": [r.record() for r in sweep.runs]})
    failed = sum(r.failed for r in sweep.runs)
    if failed:
        where = "metadata.json" if len(sweep.runs) == 1 else "the metadata.json files"
        raise CliError(f"{failed} of {sweep.total_cells} cells failed; the sweep in {sweep.root} is incomplete "
                       f"(see {where})")
    progress.line(f"done: {sweep.root}")
    return EXIT_OK


def _judge(pipe: Any) -> Any:
    try:
        return judge_of(pipe)
    except (KeyboardInterrupt, CliError):
        raise
    except Exception as exc:  # noqa: BLE001 - one line
        raise CliError(f"cannot set up the Qwen3-VL judge (--no-score skips scoring): {one_line(exc)}") from exc


def _check_flags(args: argparse.Namespace) -> None:
    if args.cell_size < 32 or args.cell_size > 1024:
        raise UsageError(f"--cell-size must be between 32 and 1024; got {args.cell_size}")
    if args.max_cells < 1:
        raise UsageError(f"--max-cells must be at least 1; got {args.max_cells}")
    if any(not p.strip() for p in args.prompts):
        raise UsageError("--prompt must not be empty")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The axis flags as :func:`~engine.sweep.plan.plan_sweep` overrides (``None``: not given)."""
    overrides: dict[str, Any] = {
        "alphas": args.alphas, "layers": args.layers, "modes": args.modes, "tokens": args.tokens,
        "normalizations": args.normalizations, "outliers": args.outliers, "append_tokens": args.append_tokens,
        "strengths": args.strengths, "steps": args.steps, "seeds": args.seeds, "schedules": args.schedules,
        "selections": args.selections,
        "thinks": (args.thinks or ["true"]) if args.thinks is not None else None,
    }
    if args.style_weights is not None:
        try:
            overrides["alphas"] = [style_weight_to_alpha(sw) for sw in args.style_weights]
        except ValueError as exc:
            raise UsageError(f"--style-weights: {exc}") from None
    return overrides


def _plan_prompts(args: argparse.Namespace, settings: Any, refs: CliReferences, overrides: dict[str, Any]
                  ) -> _Sweep:
    """One plan per prompt, and the folders they go to (refusing one that holds an earlier sweep)."""
    plans: list[tuple[str, SweepPlan]] = []
    for prompt in args.prompts:
        base = refs.apply(base_request(settings, args, prompt, None))
        try:
            plans.append((prompt, plan_sweep(base, args.sweep, overrides, max_cells=args.max_cells)))
        except ValueError as exc:
            raise UsageError(one_line(exc)) from None
    preset = plans[0][1].preset or "custom"
    root = Path(args.output_dir or f"sweep_{preset}_{datetime.now().strftime('%Y%m%d_%H%M%S')}").expanduser()
    folders = [root] if len(plans) == 1 else [root / prompt_dirname(i, p) for i, (p, _) in enumerate(plans)]
    for folder in folders:
        if (folder / "metadata.json").exists() and not args.overwrite:
            raise UsageError(f"{folder} already holds a sweep (metadata.json); choose another --output-dir or "
                             "pass --overwrite")
    if root.exists() and not root.is_dir():
        raise UsageError(f"--output-dir {root} exists and is not a folder")
    record = {**reference_record(refs.paths[0], refs.images[0]), "references": refs.records()["references"]}
    return _Sweep(plans=plans, root=root, folders=folders, reference=record)


@dataclass
class _Sweep:
    """The prompts of one sweep command, their folders and runs (what prompts_summary.json holds)."""

    plans: list[tuple[str, SweepPlan]]
    root: Path
    folders: list[Path]
    reference: dict[str, Any]  #: the reference's record
    runs: list[SweepRun] = field(default_factory=list)
    vl_cache: dict = field(default_factory=dict)  #: extractions by ``vl_identity``, shared by the prompts
    text_cache: dict = field(default_factory=dict)  #: prompt embeddings by ``text_identity``
    score: bool = False  #: score every cell (``--no-score`` turns it off)
    judge: Any = None  #: the Qwen3-VL judge of the judged scores

    @property
    def preset(self) -> str:
        """The preset's name, or ``custom``."""
        return self.plans[0][1].preset or "custom"

    @property
    def total_cells(self) -> int:
        """Cells over all prompts."""
        return sum(len(plan.cells) for _, plan in self.plans)

    def prepare_folders(self) -> None:
        """Make the folders; with --overwrite, never leave an earlier sweep's record, grid or cells beside the new."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for folder in self.folders:
                folder.mkdir(parents=True, exist_ok=True)
                stale = [folder / "metadata.json", folder / "comparison_grid.png", self.root / "prompts_summary.json",
                         folder / CSV_FILE, folder / CHART_FILE]
                stale += [f for f in folder.glob("*.png") if CELL_FILE.match(f.name)]
                for path in stale:
                    if path.is_file():
                        path.unlink()
        except OSError as exc:
            raise CliError(f"cannot create {self.root}: {exc.strerror or exc}") from None

    def run(self, pipe: Any, reference: Any, header: dict[str, Any], progress: Progress, cell_size: int) -> None:
        """Run the prompts in turn (encodings shared between them); Ctrl-C becomes :class:`Interrupted`."""
        try:
            self.write_summary("running")
            for index in range(len(self.plans)):
                run = self._run_prompt(index, pipe, reference, header, progress, cell_size)
                progress.line(f"{run.folder}: {run.ok}/{len(run.cells)} cells ok, "
                              f"{run.header.get('vl_extractions', 0)} VL extraction(s); "
                              f"grid {run.header.get('grid') or 'not written'}")
        except KeyboardInterrupt:
            self.write_summary("interrupted")
            raise Interrupted(f"interrupted: the sweep in {self.root} is incomplete; finished cells are kept and "
                              "metadata.json says complete: false") from None
        self.write_summary("complete" if sum(r.failed for r in self.runs) == 0 else "failed")

    def _run_prompt(self, index: int, pipe: Any, reference: Any, header: dict[str, Any], progress: Progress,
                    cell_size: int) -> SweepRun:
        (prompt, plan), folder = self.plans[index], self.folders[index]
        header = {"preset": plan.preset, "preset_note": plan.note, "axes": plan.axes,
                  "overrides": header["overrides"], "plan": plan.record(), "reference": self.reference,
                  "models": header["models"], "model_load_seconds": header["model_load_seconds"],
                  "command": header["command"]}
        done = sum(len(r.cells) for r in self.runs)
        try:
            run = run_sweep(pipe, plan, folder, prompt=prompt, reference=reference, header=header,
                            progress=progress, vl_cache=self.vl_cache, text_cache=self.text_cache,
                            cell_size=cell_size, counter=(done, self.total_cells),
                            scorer=SweepScorer(reference, self.judge) if self.score else None)
        except OSError as exc:
            raise CliError(f"cannot write into {folder}: {exc.strerror or exc}") from None
        self.runs.append(run)
        return run

    def write_summary(self, status: str) -> None:
        """prompts_summary.json, for a sweep of several prompts (one prompt: its metadata.json says it all)."""
        if len(self.plans) == 1:
            return
        entries = []
        for i, (prompt, plan) in enumerate(self.plans):
            run = self.runs[i] if i < len(self.runs) else None
            entries.append({"index": i, "prompt": prompt, "dir": self.folders[i].name,
                            "status": run.status if run else "pending", "complete": bool(run and run.complete),
                            "cells_total": len(plan.cells), "cells_ok": run.ok if run else 0,
                            "cells_failed": run.failed if run else 0})
        atomic_write_json(self.root / "prompts_summary.json", {
            "format": "zvl-sweep-prompts/1", "status": status,
            "complete": status == "complete" and all(e["complete"] for e in entries),
            "preset": self.plans[0][1].preset, "reference": self.reference, "updated_at": now(), "prompts": entries})
