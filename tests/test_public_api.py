"""The package top is the supported API: every name there resolves, is the object its
module defines, and ``import router`` alone loads none of the heavy modules."""

import subprocess
import sys

import pytest

import router
from router._moved import MOVED


def test_every_public_name_resolves_to_its_module_object():
    import importlib

    assert sorted(router.__all__) == sorted(router._EXPORTS)
    for name in router.__all__:
        module = importlib.import_module(router._EXPORTS[name])
        assert getattr(router, name) is getattr(module, name), name


def test_the_readme_example_imports_work():
    from router import Router, decode_application, load_strategy, quota_store_from_url

    assert callable(Router) and callable(load_strategy)
    assert callable(decode_application) and callable(quota_store_from_url)


def test_import_router_is_cheap():
    heavy = "('numpy', 'numba', 'redis', 'pyarrow')"
    code = f"import sys, router; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        router.nope  # noqa: B018


@pytest.mark.parametrize("old", sorted(MOVED))
def test_moved_modules_keep_their_old_import_path_with_a_warning(old):
    """A user's ``import router.engine`` keeps working: the same module object as the new
    path (so a monkeypatch through either is seen by both), with a DeprecationWarning."""
    import importlib

    new = importlib.import_module(MOVED[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=MOVED[old]):
        got = importlib.import_module(old)
    assert got is new


def test_the_library_leaves_the_hosts_logging_configuration_alone():
    """Importing and using the router never configures structlog; the host's own
    configuration, once made, receives the router's events."""
    code = (
        "import structlog\n"
        "from router import Router, strategy_from_dict\n"
        "from router.testing import strategy_dict, ScoreLookupScorer, make_application\n"
        "import router.replay.run, router.billing.consumer\n"
        "r = Router(strategy_from_dict(strategy_dict()),\n"
        "           scorers={'main': ScoreLookupScorer({700: 0.02})})\n"
        "r.decide(make_application())\n"
        "assert not structlog.is_configured()\n"
        "seen = []\n"
        "structlog.configure(processors=[lambda l, m, e: seen.append(e) or ''],\n"
        "                    logger_factory=structlog.ReturnLoggerFactory())\n"
        "from router.core.logs import get_logger\n"
        "get_logger('x').warning('hello')\n"
        "assert seen and seen[0]['event'] == 'hello' and seen[0]['logger'] == 'x', seen\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
