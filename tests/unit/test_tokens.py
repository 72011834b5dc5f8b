"""Link tokens: signed, expiring, bound to one purpose, verifiable across key rotation."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from common.settings import Settings
from common.tokens import (
    Purpose,
    SigningKey,
    TokenExpired,
    TokenInvalid,
    TokenSigner,
    fingerprint,
)

GRACE = timedelta(minutes=5)


def _key(kid: str) -> SigningKey:
    return SigningKey(kid=kid, secret=secrets.token_urlsafe(32))


def _in(delta: timedelta) -> datetime:
    return datetime.now(UTC) + delta


def test_round_trip() -> None:
    signer = TokenSigner((_key("k1"),), grace=GRACE)
    deadline = _in(timedelta(hours=1)).replace(microsecond=0)
    token = signer.sign("process-1", "approval", Purpose.APPROVAL, deadline)

    claims = signer.verify(token, Purpose.APPROVAL)

    assert claims.workflow_id == "process-1"
    assert claims.callback == "approval"
    assert claims.purpose is Purpose.APPROVAL
    assert claims.expires_at == deadline + GRACE


def test_a_named_approvers_token_carries_their_id_and_is_the_same_each_time() -> None:
    signer = TokenSigner((_key("k1"),), grace=GRACE)
    deadline = _in(timedelta(hours=1))
    alice = signer.sign("process-1", "approval", Purpose.APPROVAL, deadline, approver="alice@x")
    bob = signer.sign("process-1", "approval", Purpose.APPROVAL, deadline, approver="bob@x")
    shared = signer.sign("process-1", "approval", Purpose.APPROVAL, deadline)

    assert signer.verify(alice, Purpose.APPROVAL).approver == "alice@x"
    assert signer.verify(bob, Purpose.APPROVAL).approver == "bob@x"
    assert signer.verify(shared, Purpose.APPROVAL).approver is None
    # A reminder signs again and mails the very same link.
    again = signer.sign("process-1", "approval", Purpose.APPROVAL, deadline, approver="alice@x")
    assert again == alice


def test_an_approver_cannot_be_swapped_in_a_token() -> None:
    signer = TokenSigner((_key("k1"),))
    token = signer.sign("process-1", "approval", Purpose.APPROVAL, _in(timedelta(hours=1)), "a@x")
    header, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["sub"] = "b@x"
    payload = jwt.encode(claims, "x" * 32, algorithm="HS256").split(".")[1]
    with pytest.raises(TokenInvalid):
        signer.verify(f"{header}.{payload}.{signature}", Purpose.APPROVAL)


def test_tampered_token_is_invalid() -> None:
    key = _key("k1")
    signer = TokenSigner((key,))
    token = signer.sign("process-1", "approval", Purpose.APPROVAL, _in(timedelta(hours=1)))
    header, payload, signature = token.split(".")

    # Same header and signature, but a payload naming another workflow.
    forged_claims = jwt.decode(token, options={"verify_signature": False})
    forged_claims["wf"] = "process-2"
    forged_payload = jwt.encode(forged_claims, "x" * 32, algorithm="HS256").split(".")[1]
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")

    for bad in (f"{header}.{forged_payload}.{signature}", f"{header}.{payload}.{flipped}"):
        with pytest.raises(TokenInvalid):
            signer.verify(bad, Purpose.APPROVAL)
    for garbage in ("", "not-a-token", "a.b.c"):
        with pytest.raises(TokenInvalid):
            signer.verify(garbage, Purpose.APPROVAL)


def test_token_signed_with_the_same_kid_but_another_secret_is_invalid() -> None:
    token = TokenSigner((_key("k1"),)).sign(
        "process-1", "approval", Purpose.APPROVAL, _in(timedelta(hours=1))
    )
    with pytest.raises(TokenInvalid):
        TokenSigner((_key("k1"),)).verify(token, Purpose.APPROVAL)


def test_expired_beyond_grace() -> None:
    signer = TokenSigner((_key("k1"),), grace=GRACE)
    token = signer.sign(
        "process-1", "approval", Purpose.APPROVAL, _in(-GRACE - timedelta(minutes=1))
    )
    with pytest.raises(TokenExpired):
        signer.verify(token, Purpose.APPROVAL)


def test_still_valid_within_grace() -> None:
    signer = TokenSigner((_key("k1"),), grace=GRACE)
    token = signer.sign("process-1", "approval", Purpose.APPROVAL, _in(-GRACE / 2))
    assert signer.verify(token, Purpose.APPROVAL).workflow_id == "process-1"


@pytest.mark.parametrize(
    ("signed_for", "presented_for"),
    [(Purpose.APPROVAL, Purpose.COMMAND), (Purpose.COMMAND, Purpose.APPROVAL)],
)
def test_wrong_purpose_is_refused(signed_for: Purpose, presented_for: Purpose) -> None:
    signer = TokenSigner((_key("k1"),))
    token = signer.sign("process-1", "command-one", signed_for, _in(timedelta(hours=1)))
    with pytest.raises(TokenInvalid):
        signer.verify(token, presented_for)


def test_key_rotation() -> None:
    old, new = _key("k1"), _key("k2")
    deadline = _in(timedelta(hours=1))
    old_token = TokenSigner((old,)).sign("process-1", "approval", Purpose.APPROVAL, deadline)

    rotated = TokenSigner((new, old))
    assert rotated.verify(old_token, Purpose.APPROVAL).workflow_id == "process-1"
    new_token = rotated.sign("process-2", "approval", Purpose.APPROVAL, deadline)
    assert jwt.get_unverified_header(new_token)["kid"] == "k2"
    assert TokenSigner((new,)).verify(new_token, Purpose.APPROVAL).workflow_id == "process-2"

    retired = TokenSigner((new,))  # the old key has been dropped
    with pytest.raises(TokenInvalid, match="unknown signing key"):
        retired.verify(old_token, Purpose.APPROVAL)


def test_signer_needs_a_key() -> None:
    with pytest.raises(ValueError):
        TokenSigner(())


@pytest.mark.parametrize(
    "text", ["k1:too-short", "no-separator-" + "x" * 40, ":" + "x" * 40, "k1:", ""]
)
def test_signing_key_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        SigningKey.parse(text)


def test_signing_key_parse_and_repr_hides_the_secret() -> None:
    secret = "s" * 32
    key = SigningKey.parse(f" k1:{secret} ")
    assert (key.kid, key.secret) == ("k1", secret)
    assert secret not in repr(key)


def test_settings_read_rotated_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    new_secret, old_secret = "n" * 40, "o" * 40
    monkeypatch.setenv("APPROVAL_SIGNING_KEYS", f"k2:{new_secret}, k1:{old_secret}")

    settings = Settings()

    assert [key.kid for key in settings.signing_keys] == ["k2", "k1"]
    assert settings.signing_keys[0].secret == new_secret
    old_token = TokenSigner((SigningKey("k1", old_secret),)).sign(
        "process-1", "approval", Purpose.APPROVAL, _in(timedelta(hours=1))
    )
    assert settings.signer.verify(old_token, Purpose.APPROVAL).workflow_id == "process-1"


def test_settings_refuse_a_short_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPROVAL_SIGNING_KEYS", "k1:short")
    with pytest.raises(ValueError, match="shorter than 32 bytes"):
        Settings()


def test_settings_need_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPROVAL_SIGNING_KEYS", raising=False)
    with pytest.raises(ValueError):
        Settings()


def test_fingerprint_is_short_and_stable() -> None:
    assert fingerprint("token") == fingerprint("token")
    assert len(fingerprint("token")) == 12
    assert "token" not in fingerprint("token")
