"""Which company and agent answer a phone call: the routing rules both carriers share.

    1. an agent id the call names (signed TwiML parameters, an Exotel custom parameter)
    2. the dialled number in the company's number table (`Store.route_number`)
    3. the carrier's `default_agent_id` setting
    4. the `demo` company's default agent (what `serve` creates on an empty store)

A route names the company and, optionally, the agent; without one the company's default agent
answers (the call edge resolves it and refuses an unknown agent).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mediaserver.store import Company, Store

logger = logging.getLogger(__name__)

DEMO_COMPANY = "demo"


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    company: Company
    agent_id: str | None  # None: the company's default agent
    rule: str  # which rule matched, for the log: "named", "number", "default", "demo"


async def route_call(
    store: Store,
    *,
    company_id: str = "",
    agent_id: str = "",
    number: str = "",
    default_agent_id: str = "",
) -> Route | None:
    """The first rule that matches, or None when nobody answers."""
    if company_id:
        company = await store.get_company(company_id)
        if company is not None:
            return Route(company=company, agent_id=agent_id or None, rule="named")
    elif agent_id:
        company = await _company_of_agent(store, agent_id)
        if company is not None:
            return Route(company=company, agent_id=agent_id, rule="named")
    if number:
        routed = await store.route_number(number)
        if routed is not None:
            company, agent = routed
            return Route(company=company, agent_id=agent.id, rule="number")
    if default_agent_id:
        company = await _company_of_agent(store, default_agent_id)
        if company is not None:
            return Route(company=company, agent_id=default_agent_id, rule="default")
        logger.warning("= default agent %r does not exist", default_agent_id)
    for company in await store.list_companies():
        if company.name == DEMO_COMPANY:
            return Route(company=company, agent_id=None, rule="demo")
    return None


async def _company_of_agent(store: Store, agent_id: str) -> Company | None:
    # Agent ids are unique across companies; the store looks agents up per company.
    for company in await store.list_companies():
        if await store.get_agent(company.id, agent_id) is not None:
            return company
    return None
