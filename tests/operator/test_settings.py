"""The operator's settings: one declaration feeding flags, variables, --help and the README."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest
from clipserve_operator.cli import build_parser
from clipserve_operator.settings import Settings, env_name, flag_name, from_args

from scripts import generate


def _settings(*argv: str, env: dict[str, str] | None = None) -> Settings:
    return from_args(build_parser().parse_args(list(argv)), env or {})


def test_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "CLIPSERVE_OPERATOR_HELM": "/opt/helm",
            "CLIPSERVE_OPERATOR_METRICS_PORT": "0",
            "CLIPSERVE_OPERATOR_RESYNC_S": "30",
        }
    )
    assert (settings.helm, settings.metrics_port, settings.resync_s) == ("/opt/helm", 0, 30.0)
    assert Settings.from_env({}).chart.endswith("charts/clipserve")


def test_flags_override_variables_which_override_defaults() -> None:
    env = {"CLIPSERVE_OPERATOR_HELM": "/env/helm", "CLIPSERVE_OPERATOR_RESYNC_S": "30"}
    settings = _settings("--helm", "/flag/helm", "--verbose", env=env)
    assert (settings.helm, settings.resync_s, settings.verbose) == ("/flag/helm", 30.0, True)
    assert settings.cluster_domain == Settings().cluster_domain


def test_namespaces_repeat_or_comma_separate() -> None:
    assert _settings().namespace == ()
    repeated = _settings("--namespace", "ml", "--namespace", "a,b")
    assert repeated.namespace == ("ml", "a", "b")
    assert _settings(env={"CLIPSERVE_OPERATOR_NAMESPACE": "x, y"}).namespace == ("x", "y")


def test_values_allow_is_a_list_of_dotted_paths() -> None:
    env = {"CLIPSERVE_OPERATOR_VALUES_ALLOW": "fetchAllow, keda.prometheus.serverAddress"}
    assert _settings(env=env).values_allow == ("fetchAllow", "keda.prometheus.serverAddress")
    assert _settings("--values-allow", "extraEnv").values_allow == ("extraEnv",)
    assert Settings().values_allow == ()


@pytest.mark.parametrize(
    ("raw", "value"), [("1", True), ("true", True), ("On", True), ("0", False), ("", False)]
)
def test_verbose_variable_reads_as_a_boolean(raw: str, value: bool) -> None:
    assert Settings.from_env({"CLIPSERVE_OPERATOR_VERBOSE": raw}).verbose is value


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CLIPSERVE_OPERATOR_VERBOSE": "maybe"}, "CLIPSERVE_OPERATOR_VERBOSE"),
        ({"CLIPSERVE_OPERATOR_METRICS_PORT": "eighty"}, "CLIPSERVE_OPERATOR_METRICS_PORT"),
    ],
)
def test_a_variable_that_does_not_parse_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        (Settings(namespace=("ok", "Not_A_Namespace")), "--namespace"),
        (Settings(metrics_port=70000), "--metrics-port"),
        (Settings(retry_delay_s=0), "--retry-delay-s"),
        (Settings(resync_s=-1), "--resync-s"),
        (Settings(values_allow=("keda..query",)), "--values-allow"),
    ],
)
def test_check_refuses_unusable_values_naming_flag_and_variable(
    settings: Settings, named: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(named)) as err:
        settings.check()
    assert "CLIPSERVE_OPERATOR_" in str(err.value)


def test_defaults_pass_the_check() -> None:
    Settings().check()


def test_help_documents_every_setting_with_its_variable() -> None:
    text = re.sub(r"\s+", " ", build_parser().format_help())
    for f in fields(Settings):
        assert flag_name(f) in text and env_name(f) in text, f.name
    assert "--version" in text and "exit status" in text


def test_readme_operator_table_matches_the_settings() -> None:
    problems = generate.stale([generate.tables.OPERATOR_SETTINGS])
    assert not problems, "\n".join(problems)
