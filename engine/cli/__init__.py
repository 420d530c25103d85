"""``python -m engine``: the command-line tools (make-tiny, stylize, sweep)."""
