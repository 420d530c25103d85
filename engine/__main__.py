"""``python -m engine make-tiny | stylize | sweep`` (see :mod:`engine.cli`)."""

from engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
