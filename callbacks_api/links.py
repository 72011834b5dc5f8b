"""The signed token in a link's path: verified, and checked to name what its route can signal.

Both audiences' routes start here, so a damaged, expired or misdirected link is refused the same
way on each, and its token is only ever logged by fingerprint.
"""

from __future__ import annotations

import logging

from callbacks_api import problems
from common.tokens import Purpose, TokenClaims, TokenExpired, TokenInvalid, TokenSigner, fingerprint
from workflows.messages import APPROVAL_CALLBACK, PROCESS_ID_PREFIX, CommandName

logger = logging.getLogger(__name__)


def verify(signer: TokenSigner, token: str, purpose: Purpose) -> TokenClaims:
    """The token's claims, or the refusal (410 expired, 403 anything else) as a ``Problem``."""
    try:
        claims = signer.verify(token, purpose)
    except TokenExpired as err:
        logger.info("Expired %s token=%s", purpose.value, fingerprint(token))
        raise problems.expired_token() from err
    except TokenInvalid as err:
        logger.warning("Refused %s token=%s: %s", purpose.value, fingerprint(token), err)
        raise problems.invalid_token() from err
    # Well signed but naming something this route cannot signal: refused all the same.
    if purpose is Purpose.APPROVAL:
        known = claims.callback == APPROVAL_CALLBACK
    else:
        known = claims.callback in {name.value for name in CommandName}
    if not known or not claims.workflow_id.startswith(PROCESS_ID_PREFIX):
        logger.warning(
            "Refused %s token=%s naming callback %r",
            purpose.value,
            fingerprint(token),
            claims.callback,
            extra={"process_id": claims.workflow_id},
        )
        raise problems.invalid_token()
    return claims
