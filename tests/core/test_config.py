from pathlib import Path

import pytest

from router.core.config import load_strategy, strategy_from_dict
from router.core.errors import ConfigError
from router.testing import strategy_dict

ROOT = Path(__file__).resolve().parents[2]


def test_example_strategy_loads():
    s = load_strategy(ROOT / "configs" / "strategy.toml")
    assert 5 <= len(s.partners) <= 8
    assert all(p.apr_max <= s.economics.legal_apr_cap for p in s.partners)


def _bad(mutate):
    d = strategy_dict()
    mutate(d)
    return d


CASES = [
    (
        "rev-share over 100%",
        lambda d: d["partners"][0]["terms"].update(rev_share=1.5),
        r"partners\[bank_a\]\.terms\.rev_share.*<= 1\.0.*1\.5",
    ),
    (
        "negative cap",
        lambda d: d["partners"][1]["caps"][0].update(count=-5),
        r"partners\[plat_b\]\.caps\[0\]\.count.*>= 0.*-5",
    ),
    (
        "partner APR above legal cap",
        lambda d: d["partners"][1].update(apr_max=0.36),
        r"partners\[plat_b\]\.apr_max: partner APR exceeds the legal cap 0\.24.*0\.36",
    ),
    (
        "unknown partner in consent list",
        lambda d: d.update(channels={"h5": {"consent_partners": ["bank_a", "nobody"]}}),
        r"channels\.h5\.consent_partners\[1\]: unknown partner.*'nobody'",
    ),
    (
        "unknown scorer",
        lambda d: d["primary"].update(scorer="gbm"),
        r"primary\.scorer: unknown scorer.*'gbm'",
    ),
    (
        "duplicate partner id",
        lambda d: d["partners"][1].update(id="bank_a"),
        r"partners\[bank_a\]\.id: duplicate partner id",
    ),
    (
        "own cap above legal cap",
        lambda d: d["economics"].update(own_apr_cap=0.3),
        r"economics\.own_apr_cap: exceeds the legal APR cap.*0\.3",
    ),
    (
        "unknown time zone",
        lambda d: d["partners"][0].update(timezone="Mars/Olympus"),
        r"partners\[bank_a\]\.timezone: unknown time zone.*Mars/Olympus",
    ),
    (
        "partner id moving the cluster slot",
        lambda d: d["partners"][0].update(id="bank{a}"),
        r"partners\[bank\{a\}\]\.id.*bank\{a\}",
    ),
    (
        "cap without limits",
        lambda d: d["partners"][0].update(caps=[{"window": "day"}]),
        r"caps\[0\].*needs `count` or `amount`",
    ),
    (
        "duplicate cap window",
        lambda d: d["partners"][1].update(
            caps=[{"window": "day", "count": 1}, {"window": "day", "count": 2}]
        ),
        r"caps\[1\]\.window: duplicate window",
    ),
    (
        "unknown window",
        lambda d: d["partners"][1].update(caps=[{"window": "week", "count": 1}]),
        r"caps\[0\]\.window.*'week'",
    ),
    (
        "min age above max age",
        lambda d: d["rules"].update(min_age=70),
        r"rules\.min_age: exceeds rules\.max_age",
    ),
    ("unknown field", lambda d: d["economics"].update(fundng_cost=0.1), r"economics.*fundng_cost"),
    (
        "fixed return missing",
        lambda d: d["branch"].update(fixed_return=0.0),
        r"branch\.fixed_return: must be > 0",
    ),
    (
        "apr_min above apr_max",
        lambda d: d["partners"][0].update(apr_min=0.2),
        r"partners\[bank_a\]\.apr_min: exceeds apr_max",
    ),
]


@pytest.mark.parametrize("name,mutate,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_config_message(name, mutate, pattern):
    with pytest.raises(ConfigError, match=pattern):
        strategy_from_dict(_bad(mutate), source="strategy.toml")


def test_error_names_file(tmp_path):
    (tmp_path / "s.toml").write_text('version = "x"\n[economics]\nfunding_cost = "high"\n')
    with pytest.raises(ConfigError, match=r"s\.toml: economics\.funding_cost.*'high'"):
        load_strategy(tmp_path / "s.toml")


def test_partner_book_errors_name_the_book(tmp_path):
    text = (ROOT / "configs" / "strategy.toml").read_text()
    (tmp_path / "s.toml").write_text(text.replace("../models/", str(ROOT / "models") + "/"))
    book = (
        (ROOT / "configs" / "partners.toml")
        .read_text()
        .replace("rev_share = 0.30", "rev_share = 3.0")
    )
    (tmp_path / "partners.toml").write_text(book)
    with pytest.raises(
        ConfigError, match=r"partners\.toml: partners\[platform_yunfan\]\.terms\.rev_share"
    ):
        load_strategy(tmp_path / "s.toml")


def test_malformed_toml(tmp_path):
    (tmp_path / "s.toml").write_text("version = \n")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_strategy(tmp_path / "s.toml")
