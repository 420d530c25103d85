"""The bot's user-facing flows, run again with the shared queue: the same test bodies as the embedded backend's
(tests/e2e/test_e2e_*.py), handed a guild of a bot with ``ZVL_REDIS_URL`` and two ``engine serve`` workers.

Flows whose expectation is specific to one in-process worker are not repeated here: the strict finish order of
``test_three_users_take_fair_turns`` (two workers finish jobs side by side; the global fair order itself is the
differential test of tests/engine/serving/redis) and the in-process restart log lines.
"""

from __future__ import annotations

import pytest

from tests.e2e import test_e2e_delivery as delivery
from tests.e2e import test_e2e_multiref as multiref
from tests.e2e import test_e2e_options as options
from tests.e2e import test_e2e_styles_describe as styles
from tests.e2e import test_e2e_stylize as stylize
from tests.e2e.test_e2e_redis import radmin, redis_fleet, rfake, rspace  # noqa: F401 (the fleet, one per module)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(420)]


async def test_stylize_result_metadata_and_message_order(rspace) -> None:  # noqa: F811
    await stylize.test_stylize_result_metadata_and_message_order(rspace)


@pytest.mark.parametrize("data, name, expected, from_metadata", stylize.BAD_ATTACHMENTS)
async def test_bad_attachment_is_refused_privately_then_the_next_request_works(
        rspace, data: bytes, name: str, expected: str, from_metadata: bool) -> None:  # noqa: F811
    await stylize.test_bad_attachment_is_refused_privately_then_the_next_request_works(
        rspace, data, name, expected, from_metadata)


async def test_buttons_reroll_for_the_owner_and_refuse_others(rspace) -> None:  # noqa: F811
    await stylize.test_buttons_reroll_for_the_owner_and_refuse_others(rspace)


async def test_describe_returns_four_suggestions_and_a_button_stylizes_with_one(rspace) -> None:  # noqa: F811
    await styles.test_describe_returns_four_suggestions_and_a_button_stylizes_with_one(rspace)


async def test_a_negative_image_changes_the_image_and_records_the_cfg_scale(rspace) -> None:  # noqa: F811
    await multiref.test_a_negative_image_changes_the_image_and_records_the_cfg_scale(rspace)


async def test_control_characters_are_removed_from_the_result_card(rspace) -> None:  # noqa: F811
    await options.test_control_characters_are_removed_from_the_result_card(rspace)


async def test_gateway_drop_mid_job_still_delivers(rspace) -> None:  # noqa: F811
    await delivery.test_gateway_drop_mid_job_still_delivers(rspace)


async def test_429_on_the_result_edit_is_retried_and_delivered(rspace) -> None:  # noqa: F811
    await delivery.test_429_on_the_result_edit_is_retried_and_delivered(rspace)
