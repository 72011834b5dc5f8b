"""Signed, expiring, purpose-bound tokens for approval links and command callbacks.

A token is a JWT (HS256, PyJWT) naming one workflow and one callback. The audience claim binds
it to its purpose, so an approval token is refused on the command route and the reverse. The
``kid`` header picks the verifying key, so keys rotate: the newest signs, every listed key verifies.
A named approver's link carries their id as the subject: holding the link is the identity, so
it decides for that approver and nobody else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import jwt


class Purpose(StrEnum):
    APPROVAL = "approval"
    COMMAND = "command-callback"


class TokenError(Exception):
    """Base for every reason a token is refused."""


class TokenInvalid(TokenError):
    """Malformed, tampered, wrong key, or meant for another purpose."""


class TokenExpired(TokenError):
    """Well signed, but past its deadline plus grace."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    secret: str

    MIN_SECRET_BYTES = 32

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        kid, sep, secret = text.strip().partition(":")
        if not sep or not kid or not secret:
            raise ValueError("a signing key is written 'kid:secret'")
        if len(secret.encode()) < cls.MIN_SECRET_BYTES:
            raise ValueError(f"signing key {kid!r} is shorter than {cls.MIN_SECRET_BYTES} bytes")
        return cls(kid=kid, secret=secret)

    def __repr__(self) -> str:  # never print the secret
        return f"SigningKey(kid={self.kid!r})"


@dataclass(frozen=True)
class TokenClaims:
    workflow_id: str
    callback: str
    purpose: Purpose
    expires_at: datetime
    approver: str | None = None  # the named approver this link belongs to (claim ``sub``)
    # The W3C traceparent of the span that made the link: a reply continues the process's trace.
    trace_parent: str | None = None


class TokenSigner:
    def __init__(self, keys: tuple[SigningKey, ...], grace: timedelta = timedelta(minutes=5)):
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = keys
        self._by_kid = {key.kid: key for key in keys}
        self._grace = grace

    def sign(
        self,
        workflow_id: str,
        callback: str,
        purpose: Purpose,
        deadline: datetime,
        approver: str | None = None,
        *,
        trace_parent: str | None = None,
    ) -> str:
        """Sign a token valid until ``deadline`` plus the grace period.

        The same arguments give the same token (no issue time, no nonce), so a reminder mails
        the very link the request did.
        """
        key = self._keys[0]
        expires = deadline + self._grace
        claims: dict[str, object] = {
            "wf": workflow_id,
            "cb": callback,
            "aud": purpose.value,
            "exp": expires,
        }
        if approver is not None:
            claims["sub"] = approver
        if trace_parent:
            claims["tp"] = trace_parent
        return jwt.encode(claims, key.secret, algorithm="HS256", headers={"kid": key.kid})

    def verify(self, token: str, purpose: Purpose) -> TokenClaims:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as err:
            raise TokenInvalid("malformed token") from err
        key = self._by_kid.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenInvalid("unknown signing key")
        try:
            claims = jwt.decode(
                token,
                key.secret,
                algorithms=["HS256"],
                audience=purpose.value,
                options={"require": ["exp", "aud", "wf", "cb"]},
            )
        except jwt.ExpiredSignatureError as err:
            raise TokenExpired("token expired") from err
        except jwt.PyJWTError as err:
            raise TokenInvalid(str(err)) from err
        approver = claims.get("sub")
        if approver is not None and (not isinstance(approver, str) or not approver):
            raise TokenInvalid("malformed subject")
        return TokenClaims(
            workflow_id=str(claims["wf"]),
            callback=str(claims["cb"]),
            purpose=purpose,
            expires_at=datetime.fromtimestamp(int(claims["exp"])).astimezone(),
            approver=approver,
            trace_parent=_trace_parent(claims),
        )

    def trace_parent(self, token: str) -> str | None:
        """The traceparent a well-signed token carries, for any purpose, even expired; else None.

        Only for placing a request's span in its process's trace, before the route verifies the
        token fully. The signature is still checked, so a forged link cannot write into a trace.
        """
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._by_kid.get(kid) if isinstance(kid, str) else None
            if key is None:
                return None
            claims = jwt.decode(
                token,
                key.secret,
                algorithms=["HS256"],
                options={"verify_aud": False, "verify_exp": False},
            )
        except jwt.PyJWTError:
            return None
        return _trace_parent(claims)


def _trace_parent(claims: dict[str, object]) -> str | None:
    value = claims.get("tp")
    return value if isinstance(value, str) else None


def fingerprint(token: str) -> str:
    """A short, stable stand-in for a token in logs; the token itself is never logged."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]
