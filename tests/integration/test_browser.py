"""The approval pages in a real browser, through ``make run``'s stack, as an approver uses them.

Chromium is Debian's ``chromium`` package (Playwright for Python drives it through
``executable_path``: no browser is downloaded). The stack is ``python -m local_stack`` on free
ports, as in test_end_to_end, shared with the other tests that only add processes to it
(``run_stack``, tests/integration/conftest.py). Each page the approver sees is saved as a
screenshot in the test's temporary folder (pytest prints its path when a test fails).

Without Chromium the whole module is skipped with one reason that says how to get it; ``-ra``
(on in pyproject.toml) shows that line in every run, so a missing browser is never a silent pass.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.integration.test_end_to_end import RunningStack, start_through_cli
from tests.support.waiting import eventually

# On the worker that runs make run's stack for all its users (tests/integration/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("run_stack")]

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip(
        "no Chromium: install it (apt-get install chromium) or set CHROMIUM_PATH; "
        "not run: the approval page in a real browser (approve, a late reject's 409, "
        "phone width, keyboard only)",
        allow_module_level=True,
    )

from playwright.async_api import (  # noqa: E402
    Browser,
    BrowserContext,
    Page,
    ViewportSize,
    async_playwright,
)

# Flags for a machine with no network but the loopback: without the background-networking ones,
# Chromium keeps dialling Google's services at start. Playwright adds headless and --no-sandbox.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = ViewportSize(width=375, height=740)
DESKTOP = ViewportSize(width=1280, height=900)
PAGE_TIMEOUT_MS = 30_000


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


async def new_page(browser: Browser, viewport: ViewportSize) -> tuple[BrowserContext, Page]:
    """A fresh browser context (its own cookies and cache: another person) with one page."""
    context = await browser.new_context(viewport=viewport)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    return context, await context.new_page()


async def heading(page: Page) -> str:
    return (await page.locator("h1").inner_text()).strip()


async def no_horizontal_scroll(page: Page) -> bool:
    width: Any = await page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth"
        " && document.body.scrollWidth <= window.innerWidth"
    )
    return bool(width)


async def open_from_inbox(page: Page, stack: RunningStack, process_id: str, shots: Path) -> str:
    """Open the inbox page and follow the approve link of ``process_id``'s mail."""
    await page.goto(stack.url("INBOX", "/"))
    mail = page.locator("article", has_text=process_id)
    await mail.wait_for()
    await page.screenshot(path=shots / "inbox.png", full_page=True)
    link = mail.locator("a[href*='/approvals/']:not([href*='decision=reject'])").first
    await link.click()
    await page.wait_for_load_state()
    assert page.url.startswith(stack.url("API", "/approvals/")), page.url
    return page.url


async def test_approve_in_the_browser_and_a_late_reject_sees_409(
    run_stack: RunningStack, browser: Browser, tmp_path: Path
) -> None:
    started = await start_through_cli(run_stack, "browser: deploy v2 to production")
    process_id = started["process_id"]
    approver_context, approver = await new_page(browser, DESKTOP)
    other_context, other = await new_page(browser, DESKTOP)
    try:
        # The approver follows the mail's link from the inbox page: the facts, and a form.
        link = await open_from_inbox(approver, run_stack, process_id, tmp_path)
        await approver.screenshot(path=tmp_path / "confirmation.png", full_page=True)
        assert await heading(approver) == "Approval requested"
        facts = await approver.locator("dl").first.inner_text()
        for fact in (process_id, "browser: deploy v2 to production", "e2e", "Decide by"):
            assert fact in facts, f"{fact!r} is not on the page"

        # Someone else opened the same mail earlier and decides after the approver.
        await other.goto(link)
        assert await heading(other) == "Approval requested"

        await approver.get_by_label("Approve", exact=True).check()
        await approver.get_by_label("Your name (optional)").fill("Browser Approver")
        await approver.get_by_label("Comment (optional)").fill("looks good")
        await approver.get_by_role("button", name="Submit decision").click()
        await approver.get_by_role("heading", level=1, name="Decision recorded").wait_for()
        await approver.screenshot(path=tmp_path / "recorded.png", full_page=True)
        recorded = await approver.locator("main").inner_text()
        assert "approved" in recorded and "Browser Approver" in recorded

        # Opening the link again shows the decision that was made.
        await approver.goto(link)
        await approver.screenshot(path=tmp_path / "reopened.png", full_page=True)
        reopened = await approver.locator("main").inner_text()
        for fact in ("approved", "Browser Approver", "looks good"):
            assert fact in reopened, f"{fact!r} is not on the reopened page"

        # The late Reject: refused with 409, and the page says who decided what.
        await other.get_by_label("Reject", exact=True).check()
        async with other.expect_navigation() as navigation:
            await other.get_by_role("button", name="Submit decision").click()
        response = await navigation.value
        await other.screenshot(path=tmp_path / "late-reject.png", full_page=True)
        assert response is not None and response.status == 409
        assert await heading(other) == "Already decided"
        late = await other.locator("main").inner_text()
        assert "approved" in late and "Browser Approver" in late

        # The process went on with the approval, as its record says.
        async def completed() -> bool:
            return run_stack.table_item(process_id).get("status") == "completed"

        await eventually(completed, f"{process_id} completed", within=60)
        assert run_stack.table_item(process_id)["approved_by"] == "Browser Approver"
    finally:
        await approver_context.close()
        await other_context.close()


async def test_pages_fit_a_phone_and_work_by_keyboard_alone(
    run_stack: RunningStack, browser: Browser, tmp_path: Path
) -> None:
    started = await start_through_cli(run_stack, "browser: phone and keyboard " + "x" * 60)
    process_id = started["process_id"]
    context, page = await new_page(browser, PHONE)
    try:
        link = await open_from_inbox(page, run_stack, process_id, tmp_path)
        await page.goto(run_stack.url("INBOX", "/"))
        assert await no_horizontal_scroll(page), "the inbox scrolls sideways at 375 px"
        await page.goto(link)
        await page.screenshot(path=tmp_path / "phone-confirmation.png", full_page=True)
        assert await no_horizontal_scroll(page), "the approval page scrolls sideways at 375 px"

        # Keyboard only: Tab through the page in order, Space chooses, Enter submits.
        focused: list[str] = []

        async def tab_to(element_id: str) -> None:
            for _ in range(10):
                await page.keyboard.press("Tab")
                current = await page.evaluate(
                    "document.activeElement.id || document.activeElement.tagName"
                )
                focused.append(str(current))
                if current == element_id:
                    return
            pytest.fail(f"Tab never reached #{element_id}; focus went {focused}")

        await tab_to("decision-approve")
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline not in ("none", ""), "the focused control shows no focus ring"
        await page.keyboard.press("Space")
        assert await page.locator("#decision-approve").is_checked()
        await tab_to("name")
        await page.keyboard.type("Keyboard Approver")
        await tab_to("comment")
        await tab_to("BUTTON")
        await page.keyboard.press("Enter")
        await page.get_by_role("heading", level=1, name="Decision recorded").wait_for()
        await page.screenshot(path=tmp_path / "phone-recorded.png", full_page=True)
        assert "Keyboard Approver" in await page.locator("main").inner_text()
        assert await no_horizontal_scroll(page), "the recorded page scrolls sideways at 375 px"

        await page.goto(link)
        await page.screenshot(path=tmp_path / "phone-reopened.png", full_page=True)
        assert await no_horizontal_scroll(page), "the decided page scrolls sideways at 375 px"
    finally:
        await context.close()
