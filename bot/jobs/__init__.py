"""The job feature, from a slash command to the delivered result (python-discord's package-per-feature shape).

* ``_service``: :class:`JobService` starts jobs (``/stylize``, ``/sweep``, ``/blendmode compare``, ``/preset use``,
  reroll and vary), acts on button presses and resumes jobs after a restart; :class:`SqliteRecorder` is the
  worker's recorder over the ``jobs`` table (the truth of every job's state).
* ``_delivery``: :class:`Delivery` (where a job is answered) and :class:`Notifier` (throttled status edits, then the
  result, with retries and a DM fallback).
* ``_render``: the result message (images encoded once for the disk and the upload, the embed, the JSON).
* ``_buttons``: the result and status buttons (:class:`JobButton`, a ``DynamicItem`` that survives restarts), the
  /describe suggestion buttons (:class:`SuggestionButton`) and the preset-name modal.
* ``_describe``: ``/describe`` and its suggestion buttons (a part of :class:`JobService`).

Dependencies inside: ``_service`` → ``_delivery`` → ``_render`` → ``_buttons``; the buttons reach the service
through a small Protocol, never by import. Outside this package only these names are used.
"""

from bot.jobs._buttons import JobButton, PresetNameModal, SuggestionButton, result_view, status_view
from bot.jobs._delivery import Delivery, Notifier
from bot.jobs._render import Outgoing, render_result, save_results
from bot.jobs._service import JobService, SqliteRecorder, nearby_alpha

__all__ = ["Delivery", "JobButton", "JobService", "Notifier", "Outgoing", "PresetNameModal", "SqliteRecorder",
           "SuggestionButton", "nearby_alpha", "render_result", "result_view", "save_results", "status_view"]
