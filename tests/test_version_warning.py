"""The slow-MindSpore warning: said once, on CPU, for 2.9 and 2.10 only, with the fix."""
import logging

import mindspore as ms
import pytest

from res2net_ms import process


@pytest.fixture
def fresh(monkeypatch, caplog):
    """No version warned yet; the package's log lines reach ``caplog``."""
    monkeypatch.setattr(process, "_warned_versions", set())
    monkeypatch.setattr(logging.getLogger("res2net_ms"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="res2net_ms")
    return caplog


def test_warns_once_on_cpu_for_the_slow_releases(fresh):
    for version in ("2.9.0", "2.10.1rc1"):
        message = process.warn_slow_mindspore(version, "CPU")
        assert f"MindSpore {version}" in message and "90x slower" in message
        assert "pip install mindspore==2.8.0" in message
        assert process.warn_slow_mindspore(version, "CPU") is None  # once
    assert len(fresh.records) == 2 and all("90x slower" in r.getMessage() for r in fresh.records)


def test_silent_elsewhere(fresh):
    for version, device in (("2.8.0", "CPU"), ("2.11.0", "CPU"), ("2.1.0", "CPU"),
                            ("3.9.0", "CPU"), ("2.9.0", "Ascend"), ("2.10.0", "GPU"),
                            ("unknown", "CPU")):
        assert process.warn_slow_mindspore(version, device) is None, (version, device)
    assert not fresh.records


def test_run_setup_warns_with_the_installed_version(fresh, monkeypatch):
    from res2net_ms.config import parse_args
    from res2net_ms.engine.setup import setup_context

    monkeypatch.setattr(ms, "__version__", "2.10.0")
    setup_context(parse_args([]))
    expected = ["MindSpore 2.10.0"] if ms.get_context("device_target") == "CPU" else []
    assert [m for m in expected if m in fresh.text] == expected
    monkeypatch.setattr(ms, "__version__", "2.8.0")
    assert process.warn_slow_mindspore() is None
