"""The one config base: each variable read, bounded, documented and listed from its single declaration."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.auth.config import AuthConfig
from services.collect.config import CollectConfig
from services.dispatch.config import DispatchConfig
from services.push.config import PushConfig
from shared.infra.config import Settings
from tools.cluster import ROOT

SERVICES: dict[str, type[Settings]] = {"auth": AuthConfig, "collect": CollectConfig, "dispatch": DispatchConfig,
                                       "push": PushConfig}


@pytest.fixture(autouse=True)
def development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "development")


def test_a_variable_overrides_its_default_converted_like_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """An integer, a float and a parsed list arrive converted; the untouched fields keep their defaults."""
    monkeypatch.setenv("REPLAY_PAGE", "50")
    monkeypatch.setenv("CLIENT_RATE", "2.5")
    monkeypatch.setenv("PUBLIC_TOPICS", "news, sport:*")
    config = PushConfig.from_env()
    assert (config.replay_page, config.client_rate, config.public_topics) == (50, 2.5, ("news", "sport:*"))
    assert config.replay_limit == 10_000


def test_a_value_below_its_minimum_stops_the_service_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """REPLAY_LIMIT=0 is refused with its name and minimum, where it used to be raised to 1 silently."""
    monkeypatch.setenv("REPLAY_LIMIT", "0")
    with pytest.raises(SystemExit, match="REPLAY_LIMIT='0' is below its minimum, 1"):
        PushConfig.from_env()


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("BATCH_SIZE", "many", "is not a valid int"),
    ("COLLECT_API_KEYS", "no-colon", "has an entry, 'no-colon', that is not name:key"),
    ("PUBLIC_TOPICS", "bad topic!", "has invalid topics or patterns"),
])
def test_an_unreadable_value_stops_the_service_naming_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                                                     reason: str) -> None:
    """A value that does not convert is an error that names the variable and says why."""
    monkeypatch.setenv(name, value)
    config = {"BATCH_SIZE": DispatchConfig, "COLLECT_API_KEYS": CollectConfig, "PUBLIC_TOPICS": PushConfig}[name]
    with pytest.raises(SystemExit, match=f"{name}='{value}' {reason}"):
        config.from_env()


def test_an_unknown_variable_with_the_service_prefix_is_reported(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A typo such as PUSH_PROT is named at start; another service's AUTH_URL is not auth's typo."""
    monkeypatch.setenv("PUSH_PROT", "9000")
    monkeypatch.setenv("AUTH_URL", "http://127.0.0.1:1")
    PushConfig.from_env()
    AuthConfig.from_env()
    err = capsys.readouterr().err
    assert "push: ignoring unknown variables PUSH_PROT" in err
    assert "auth: ignoring unknown" not in err


def test_derived_defaults_follow_the_fields_they_come_from(monkeypatch: pytest.MonkeyPatch) -> None:
    """PUSH_NODE_ID and PUSH_PUBLIC_URL default to the host and port in use, unless set."""
    monkeypatch.setenv("PUSH_PORT", "9123")
    config = PushConfig.from_env()
    assert (config.node_id, config.public_url) == ("127.0.0.1:9123", "ws://127.0.0.1:9123/ws")
    monkeypatch.setenv("PUSH_NODE_ID", "edge-1")
    assert PushConfig.from_env().node_id == "edge-1"


@pytest.mark.parametrize("service", SERVICES)
def test_print_config_lists_every_variable_and_exits(service: str) -> None:
    """``python -m services.X --print-config`` prints every variable of the service, with no secrets needed, and exits 0."""
    result = subprocess.run([sys.executable, "-m", f"services.{service}", "--print-config"], cwd=ROOT, capture_output=True,
                            text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    names = [spec.name for _, spec in SERVICES[service].specs()]
    assert len(names) >= 10 and all(f"`{n}`" in result.stdout for n in names)
