"""Named approvers end to end, through ``make run``'s stack (every part a real process).

Three approvers, two required: the CLI starts the process and prints each approver's own link,
the inbox shows whom each mail went to, two approvers decide through their pages, and the
process completes; the third approver's link then says the request is settled.
"""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
from temporalio.client import WorkflowExecutionStatus

from tests.integration.test_end_to_end import FLOW_TIMEOUT, RunningStack, cli

# On the worker that runs make run's stack for all its users (tests/integration/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("run_stack")]

APPROVERS = {
    "alice@example.test": "Alice",
    "bob@example.test": "Bob",
    "carol@example.test": "Carol",
}


async def decide(http: aiohttp.ClientSession, link: str, who: str) -> str:
    """Open an approver's page (changes nothing), approve, follow the redirect: the outcome."""
    async with http.get(link) as page:
        assert page.status == 200, await page.text()
        html = await page.text()
    assert f"waiting for your decision, <strong>{who}</strong>" in html
    check = re.search(r'name="check" value="([^"]*)"', html)
    assert check is not None
    form = {"check": check.group(1), "decision": "approve", "comment": f"{who} agrees"}
    async with http.post(link, data=form) as answer:
        assert answer.status == 200, await answer.text()
        assert answer.history and answer.history[0].status == 303
        return await answer.text()


async def inbox(http: aiohttp.ClientSession, stack: RunningStack, process_id: str) -> list[dict]:
    async with http.get(
        stack.url("INBOX", "/messages.json"), params={"process_id": process_id}
    ) as response:
        messages: list[dict] = (await response.json())["messages"]
    return messages


@pytest.mark.duration(8)  # the first of the run_stack group: it starts the stack
async def test_two_of_three_named_approvers_approve_through_their_pages(
    run_stack: RunningStack,
) -> None:
    async with aiohttp.ClientSession() as http:
        approvers = [f"--approver={i}={name}" for i, name in APPROVERS.items()]
        code, out, err = await cli(
            run_stack,
            "start",
            "--requested-by",
            "e2e",
            "--description",
            "deploy v2 to production",
            *approvers,
            "--required",
            "2",
            "--json",
        )
        assert code == 0, err
        started = json.loads(out)
        process_id = started["process_id"]
        links = started["approval_links"]
        assert set(links) == set(APPROVERS)
        assert len(set(links.values())) == 3  # a link of their own each
        assert started["approval_link"] is None

        # The inbox shows one mail per approver, and whom it went to.
        mails = await inbox(http, run_stack, process_id)
        assert sorted(m["approver"] for m in mails) == sorted(APPROVERS)
        for mail in mails:
            assert mail["to"] == f"{APPROVERS[mail['approver']]} <{mail['approver']}>"
            assert mail["approve_url"] == links[mail["approver"]]

        first = await decide(http, links["alice@example.test"], "Alice")
        assert "1 of 2 approvals; waiting for Bob and Carol" in first
        second = await decide(http, links["carol@example.test"], "Carol")
        assert "The request is now <strong>approved</strong>" in second

        client = await run_stack.client()
        handle = client.get_workflow_handle(process_id)
        result = await asyncio.wait_for(handle.result(), FLOW_TIMEOUT)
        assert result["status"] == "success"
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        assert run_stack.table_item(process_id)["approved_by"] == "Alice and Carol"

        # Bob's link now says the request is settled without him.
        async with http.get(links["bob@example.test"]) as page:
            assert page.status == 409
            assert "approved by Alice and Carol" in await page.text()

        code, out, err = await cli(run_stack, "status", process_id)
        assert code == 0, err
        assert "approved by Alice and Carol" in out
        assert re.search(
            r"approver\s+Alice <alice@example.test>: approved at .*\"Alice agrees\"", out
        )
        # Quorum reached without Bob: the round ended, so he did not decide (not "waiting").
        assert re.search(r"approver\s+Bob <bob@example.test>: did not decide \(asked ", out)
        assert re.search(r"mail: request\s+.* to Alice, Bob, Carol", out)
