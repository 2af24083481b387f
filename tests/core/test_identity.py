import hashlib

import pytest

from router.core.config import Identity
from router.core.errors import ConfigError
from router.core.identity import Hasher


@pytest.mark.parametrize("key", [b"k" * 16, b"another-secret-key-0123", b"x" * 100])
def test_token_is_keyed_blake2b(key):
    h = Hasher(key)
    k = key if len(key) <= 64 else hashlib.blake2b(key).digest()
    for raw in ["110101199001011234", "Company 001", "  abc  "]:
        ref = hashlib.blake2b(
            raw.strip().upper().encode(), key=k, digest_size=16, person=b"applicant"
        ).hexdigest()
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
    assert Hasher.from_config(Identity(dev_key="dev-key-0123456789ab")).token("a") == Hasher(
        b"env-key-0123456789abcdef"
    ).token("a")


def test_short_key_rejected():
    with pytest.raises(ConfigError, match="16 bytes"):
        Hasher(b"short")


@pytest.mark.parametrize("key", [b"k" * 16, b"x" * 64, b"y" * 100])
def test_column_tokens_are_the_same_digests(key):
    """The compiled hash of a whole column gives :meth:`Hasher.tokens`' tokens, including
    values stripped of ASCII (and Python's other ASCII) whitespace, lower case, the
    longest values, and values only Python normalises (non-ASCII, blank)."""
    import random

    import numpy as np
    import pyarrow as pa

    rnd = random.Random(len(key))
    raws = [
        "".join(
            rnd.choice(" \t\n\x0b\x0c\r\x1c\x1fabcxyzXYZ0189-_.") for _ in range(rnd.randint(1, 64))
        )
        for _ in range(3000)
    ]
    raws += [
        "110101199001011234",
        "  11010119900101123x\t",
        "z" * 64,
        "Straße 12",
        "\u00a0123456\u00a0",
        "ß1234",
        "    ",
        "\u2003 9876 \u2003",
        "éabc",
    ]
    h = Hasher(key)
    col = h.column_tokens(pa.array(raws))
    assert list(col) == h.tokens(raws)
    assert [col[i] for i in (0, len(raws) - 1)] == [h.token(raws[0]), h.token(raws[-1])]
    assert list(col.take(np.array([2, 1]))) == h.tokens(raws[2:0:-1])
    # A sliced Arrow array (non-zero offset) reads the right values.
    assert list(h.column_tokens(pa.array(raws).slice(5, 20))) == h.tokens(raws[5:25])
