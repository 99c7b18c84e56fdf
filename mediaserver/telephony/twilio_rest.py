"""TwilioCalls: ends a call through Twilio's REST API, so no call outlives its call tree.

    POST {api_base_url}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json   Status=completed

with HTTP Basic auth (AccountSid:AuthToken). Reference:
https://www.twilio.com/docs/voice/api/call-resource#update-a-call-resource. An edge client: the
only side effect of the telephony package; its failures are logged, never raised.
"""

from __future__ import annotations

import asyncio
import logging
import re

import httpx2

from config.settings import TwilioSettings

logger = logging.getLogger(__name__)

CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
ATTEMPTS = 3
BACKOFF_S = (0.2, 0.5)


class TwilioCalls:
    """Hangs up Twilio calls. One per server; it holds no connection between hang-ups (they
    come once per call), so it needs no closing."""

    def __init__(self, settings: TwilioSettings) -> None:
        self._settings = settings
        self.hung_up = 0
        self.failed = 0

    @property
    def configured(self) -> bool:
        return self._settings.auth_token is not None

    async def hang_up(self, call_sid: str, account_sid: str = "") -> bool:
        """Set the call's status to `completed`; True when Twilio accepted it (or it was over).

        `account_sid` is the call's (from the stream's `start`); `twilio.account_sid` wins when
        set. Retries transport errors, 429 and 5xx twice; never raises.
        """
        token = self._settings.auth_token
        account = self._settings.account_sid or account_sid
        if token is None:
            logger.warning(
                "= cannot hang up %s through the REST API: no twilio.auth_token", call_sid
            )
            return False
        if not CALL_SID.fullmatch(call_sid) or not ACCOUNT_SID.fullmatch(account):
            logger.warning("= not hanging up: malformed sids %r / %r", call_sid[:40], account[:40])
            return False
        base = self._settings.api_base_url.rstrip("/")
        url = f"{base}/2010-04-01/Accounts/{account}/Calls/{call_sid}.json"
        async with httpx2.AsyncClient(timeout=self._settings.hangup_timeout_s) as client:
            return await self._post(client, url, call_sid, account, token.get_secret_value())

    async def _post(
        self, client: httpx2.AsyncClient, url: str, call_sid: str, account: str, token: str
    ) -> bool:
        status, detail = 0, ""
        for attempt in range(ATTEMPTS):
            try:
                response = await client.post(
                    url, data={"Status": "completed"}, auth=(account, token)
                )
            except httpx2.HTTPError as exc:
                status, detail = 0, type(exc).__name__
            else:
                status, detail = response.status_code, response.reason_phrase
                if response.is_success:
                    logger.info("> hung up %s through the REST API", call_sid)
                    self.hung_up += 1
                    return True
                if status == 404:  # the call is already over (or unknown): nothing bills
                    logger.info("> %s was already over (404)", call_sid)
                    return True
                if status != 429 and status < 500:
                    break
            if attempt < ATTEMPTS - 1:
                logger.info("> hang-up of %s failed (%s %s); retrying", call_sid, status, detail)
                await asyncio.sleep(BACKOFF_S[attempt])
        logger.error("> could not hang up %s: %s %s", call_sid, status, detail)
        self.failed += 1
        return False
