"""``python -m engine``: make tiny models, stylize one image, or run a parameter sweep with a labelled grid.

Exit codes: 0 success; 1 a runtime failure (a model failed to load, a cell failed, an output could not be written);
2 a usage problem found before any model loads (a bad flag or value, an unknown preset, an invalid setting, a missing
model folder, a reference that is missing, unreadable, not an image or refused as hostile); 130 interrupted
(Ctrl-C). Every error is one line on stderr starting with ``error:``; ``--debug`` adds the traceback.

Settings precedence: flags > ``ZVL_*`` environment / ``.env`` > the TOML profile (``--config FILE --profile NAME``)
> defaults (see :mod:`engine.config`). In ``sweep``, a value given as a flag also wins over the preset's own
setting (``--sweep alpha --layer -6`` runs the alpha preset at layer -6); settings from the environment or a profile
do not (the preset is the more specific choice).

One module per command (:mod:`~engine.cli.make_tiny`, :mod:`~engine.cli.stylize`, :mod:`~engine.cli.sweep`,
:mod:`~engine.cli.describe`, :mod:`~engine.cli.score`), the parser in ``_parser``, what they share in ``_common`` /
``_output`` / ``_errors``.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence

from engine.cli._errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, CliError, Interrupted, one_line
from engine.cli._parser import build_parser
from engine.cli.describe import cmd_describe
from engine.cli.make_tiny import cmd_make_tiny
from engine.cli.score import cmd_score
from engine.cli.serve import cmd_drain, cmd_serve
from engine.cli.stylize import cmd_stylize
from engine.cli.sweep import cmd_sweep
from engine.config import SettingsError

__all__ = ["COMMANDS", "main"]

COMMANDS = {"make-tiny": cmd_make_tiny, "stylize": cmd_stylize, "sweep": cmd_sweep, "describe": cmd_describe,
            "score": cmd_score, "serve": cmd_serve, "drain": cmd_drain}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code. Never lets a traceback out (unless ``--debug``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return COMMANDS[args.command](args)
    except Interrupted as exc:
        _error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except CliError as exc:
        if debug and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        _error(str(exc))
        return exc.code
    except SettingsError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if debug:
            traceback.print_exc()
        _error(f"unexpected {one_line(exc)} (run with --debug for the traceback)")
        return EXIT_RUNTIME


def _error(message: str) -> None:
    text = " ".join(str(message).split())  # one line, whatever the message held
    print(f"error: {text}", file=sys.stderr, flush=True)
