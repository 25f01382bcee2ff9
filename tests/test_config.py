"""Settings come from defaults, a TOML file, COURIER_* variables and flags, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

from courier.config import Settings, load_settings


def test_defaults_match_the_protocol() -> None:
    s = load_settings(env={})
    assert (s.host, s.port, s.data_dir) == ("127.0.0.1", 8080, "./courier-data")
    assert s.body_max_chars == 4096 and s.frame_max_bytes == 64 * 1024
    assert s.max_connections_per_user == 32 and s.retention_days == 0
    assert s.argon2_time_cost >= 2 and s.argon2_memory_kib >= 19456


def test_sessions_expire_after_30_idle_days_unless_set_to_0_for_never() -> None:
    assert load_settings(env={}).session_idle_days == 30
    assert load_settings(env={"COURIER_SESSION_IDLE_DAYS": "0"}).session_idle_days == 0
    assert load_settings(env={"COURIER_SESSION_IDLE_DAYS": "7.5"}).session_idle_days == 7.5


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "courier.toml"
    cfg.write_text('[courier]\nport = 9000\ndata-dir = "/srv/courier"\nsend_rate = 5.5\n')
    s = load_settings(config_file=str(cfg), env={"COURIER_PORT": "9100"}, data_dir=None)
    assert (s.port, s.data_dir, s.send_rate) == (9100, "/srv/courier", 5.5)
    s = load_settings(config_file=str(cfg), env={"COURIER_PORT": "9100"}, port=9200)
    assert s.port == 9200


def test_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("retention_days = 30\n")
    assert load_settings(env={"COURIER_CONFIG": str(cfg)}).retention_days == 30


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COURIER_PORT": "eighty"}, "COURIER_PORT"),
        ({"COURIER_PORT": "70000"}, "port"),
        ({"COURIER_SEND_RATE": "0"}, "send_rate"),
        ({"COURIER_RETENTION_DAYS": "-1"}, "retention_days"),
        ({"COURIER_SESSION_IDLE_DAYS": "-0.5"}, "session_idle_days"),
    ],
)
def test_bad_values_are_refused_with_their_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(env=env)


def test_unknown_keys_in_the_file_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="prot"):
        load_settings(config_file=str(cfg), env={})


VALID_TEXT = {
    "cache": "redis",
    "store": "rocks",
    "broker": "local",
    "trusted_proxies": "10.0.0.0/8",
    "metrics_listen": "127.0.0.1:9100",
    "metrics_token": "a-token-of-sixteen-or-more",
}


def test_bad_addresses_and_metrics_settings_stop_the_server() -> None:
    for env, name in [
        ({"COURIER_TRUSTED_PROXIES": "10.0.0.0/8, nonsense"}, "trusted_proxies"),
        ({"COURIER_METRICS_LISTEN": "127.0.0.1"}, "metrics_listen"),
        ({"COURIER_METRICS_TOKEN": "short"}, "metrics_token"),
        ({"COURIER_MAX_CONNECTIONS_PER_ADDRESS": "-1"}, "max_connections_per_address"),
    ]:
        with pytest.raises(ValueError, match=name):
            load_settings(env=env)


def test_every_setting_has_an_environment_variable() -> None:
    for name, kind in zip(
        Settings.__struct_fields__, Settings.__annotations__.values(), strict=True
    ):
        value = VALID_TEXT.get(name, "x") if kind == "str" else "1"
        expected = value if kind == "str" else 1
        assert getattr(load_settings(env={f"COURIER_{name.upper()}": value}), name) == expected
