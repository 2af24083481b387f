import hashlib

import pytest

from router.config import Identity
from router.errors import ConfigError
from router.identity import Hasher


@pytest.mark.parametrize("key", [b"k" * 16, b"another-secret-key-0123", b"x" * 100])
def test_token_is_keyed_blake2b(key):
    h = Hasher(key)
    k = key if len(key) <= 64 else hashlib.blake2b(key).digest()
    for raw in ["110101199001011234", "Company 001", "  abc  "]:
        ref = hashlib.blake2b(raw.strip().upper().encode(), key=k, digest_size=16,
                              person=b"applicant").hexdigest()
        assert h.token(raw) == ref
        assert h.tokens([raw]) == [ref]


def test_purposes_are_separate_domains():
    h = Hasher(b"k" * 16)
    assert h.token("X", "applicant") != h.token("X", "employer")
    assert h.cached_token("X", "employer") == h.token("X", "employer")


def test_key_from_env_or_dev_key(monkeypatch):
    monkeypatch.delenv("ROUTER_HMAC_KEY", raising=False)
    with pytest.raises(ConfigError, match="ROUTER_HMAC_KEY"):
        Hasher.from_config(Identity())
    monkeypatch.setenv("ROUTER_HMAC_KEY", "env-key-0123456789abcdef")
    assert Hasher.from_config(Identity(dev_key="dev-key-0123456789ab")).token("a") == \
        Hasher(b"env-key-0123456789abcdef").token("a")


def test_short_key_rejected():
    with pytest.raises(ConfigError, match="16 bytes"):
        Hasher(b"short")
