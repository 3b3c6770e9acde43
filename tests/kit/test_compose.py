"""docker-compose.yml (and docker/ollama-gpu.yml) checked without a Docker engine: the services the README
promises, wiring that matches .env.example and the settings, and what Docker would refuse or silently get wrong."""

from __future__ import annotations

import json

import pytest

from bot.cli.doctor import CHECKS
from tests.harness.compose import (
    COMPOSE,
    ENV_EXAMPLE,
    ROOT,
    documented_names,
    environment,
    image_tag,
    interpolate,
    interpolated_names,
    load_compose,
    setting_names,
    setting_of,
    volume_sources,
)

COMPOSE_FILES = [COMPOSE, ROOT / "docker" / "ollama-gpu.yml"]
SERVICES = {"ollama", "bot", "worker", "redis", "postgres"}


@pytest.fixture(scope="module")
def compose():
    return load_compose()


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def test_the_promised_services_exist_and_postgres_is_opt_in(services):
    assert set(services) == SERVICES
    assert services["postgres"].get("profiles") == ["postgres"]
    assert all("profiles" not in s for name, s in services.items() if name != "postgres")


def test_every_interpolated_variable_is_documented_in_env_example():
    documented = documented_names()
    for path in COMPOSE_FILES:
        missing = interpolated_names(path.read_text(encoding="utf-8")) - documented
        assert not missing, f"{path.name} uses ${{…}} variables .env.example does not document: {sorted(missing)}"


def test_every_setting_passed_to_a_container_is_documented_and_real(services):
    documented = documented_names()
    fields = setting_names()
    for name, service in services.items():
        for var in environment(service):
            if var.startswith("LORALOOP_") or var in ("DISCORD_TOKEN", "OLLAMA_HOST"):
                assert var in documented, f"{name}: {var} is not documented in .env.example"
            if var.startswith("LORALOOP_"):
                assert setting_of(var) in fields, f"{name}: {var} is not a loraloop setting"


def test_env_example_only_documents_real_settings():
    fields = setting_names()
    unknown = {n for n in documented_names() if n.startswith("LORALOOP_") and setting_of(n) not in fields}
    assert not unknown, f".env.example documents settings that do not exist: {sorted(unknown)}"


def test_the_containers_reach_each_other_by_service_name_by_default(services):
    # .env.example's OLLAMA_HOST / LORALOOP_REDIS_URL are for running on the host; in a container 127.0.0.1 is
    # the container itself, so compose must not take them from .env (interpolation reads .env).
    for name in ("bot", "worker"):
        env = interpolate(environment(services[name]), {"OLLAMA_HOST": "http://127.0.0.1:11434",
                                                        "LORALOOP_REDIS_URL": "redis://127.0.0.1:6379/0"})
        assert env["OLLAMA_HOST"] == "http://ollama:11434"
        assert env["LORALOOP_REDIS_URL"] == "redis://redis:6379/0"
    assert environment(services["bot"])["LORALOOP_DISPATCHER"] == "celery"  # the bot image cannot train
    split = interpolate(environment(services["bot"]), {"DOCKER_OLLAMA_HOST": "http://gpu-box:11434"})
    assert split["OLLAMA_HOST"] == "http://gpu-box:11434"


def test_bot_and_worker_read_the_env_file_without_requiring_it(services):
    for name in ("bot", "worker"):
        assert services[name]["env_file"] == [{"path": ".env", "required": False}]
    assert ENV_EXAMPLE.is_file()


def test_every_named_volume_is_declared_and_every_declared_volume_used(compose, services):
    declared = set(compose.get("volumes") or {})
    used = {source for s in services.values() for source, kind in volume_sources(s) if kind == "volume"}
    assert used <= declared, f"undeclared volumes: {sorted(used - declared)}"
    assert declared <= used, f"declared but unused volumes: {sorted(declared - used)}"
    assert {"ollama", "bot-data", "hf-cache"} <= used  # models, the SQLite file, the Hugging Face cache


def test_build_contexts_and_dockerfiles_exist(services):
    built = {name: s["build"] for name, s in services.items() if "build" in s}
    assert set(built) == {"bot", "worker"}
    for name, build in built.items():
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context.is_dir(), name
        assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
    assert built["bot"]["dockerfile"] == "docker/Dockerfile.bot"
    assert built["worker"]["dockerfile"] == "docker/Dockerfile.worker"


def test_images_are_pinned(services):
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image name"
        tag = image_tag(image)
        assert tag and tag != "latest" and not tag.startswith("$"), f"{name}: {image} is not pinned"
    assert services["ollama"]["image"] == "ollama/ollama:0.34.1"  # the newest release the deploy is tested against


def test_the_worker_reserves_a_gpu_and_the_bot_does_not(services):
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)
    assert "deploy" not in services["bot"]


def test_ollama_gpu_override_only_adds_a_gpu_to_ollama():
    override = load_compose(ROOT / "docker" / "ollama-gpu.yml")
    assert set(override["services"]) == {"ollama"}
    devices = override["services"]["ollama"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)
    assert "docker/ollama-gpu.yml" in ENV_EXAMPLE.read_text(encoding="utf-8")  # the COMPOSE_FILE example


def test_every_service_has_a_healthcheck_and_a_restart_policy(services):
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and not service["healthcheck"].get("disable"), name
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name


def test_healthchecks_run_real_checks(services):
    test = services["bot"]["healthcheck"]["test"]
    assert test[1:3] == ["loraloop", "doctor"]
    names = [test[i + 1] for i, word in enumerate(test) if word == "--check"]
    assert names and all(n.replace("-", " ") in CHECKS for n in names), names
    # The worker image has no loraloop CLI (no database stack): its own entry point checks Redis and the GPU.
    assert services["worker"]["healthcheck"]["test"][1:] == ["python", "-m", "worker", "--check"]


def test_depends_on_names_existing_services_with_conditions_they_can_meet(services):
    for name, service in services.items():
        for target, spec in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert spec["condition"] in ("service_started", "service_healthy", "service_completed_successfully")
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}, which has no healthcheck"
            if "profiles" in services[target]:
                assert spec.get("required") is False, f"{name} requires {target}, which only runs in a profile"
    assert services["bot"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_unauthenticated_services_are_published_on_loopback_by_default(services):
    for name in ("ollama", "redis"):
        for port in services[name].get("ports", []):
            published = interpolate(port)
            assert published.startswith("127.0.0.1:"), f"{name} would listen on every interface: {published}"
    assert "ports" not in services["postgres"]


def test_the_commands_are_the_images_own():
    # bot and worker keep their image's CMD (loraloop bot / loraloop worker; see test_dockerfiles.py).
    services = load_compose()["services"]
    assert "command" not in services["bot"] and "command" not in services["worker"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_matches_the_compose_specification_schema(path):
    """The official compose-spec JSON schema, as vendored by check-jsonschema (skipped where not installed)."""
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema to validate against compose-spec")
    import importlib.resources

    import jsonschema

    text = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(text.read_text(encoding="utf-8"))
    document = interpolate(load_compose(path))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_interpolation_follows_compose_rules():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d}") == "d"
    assert interpolate("${SET:-d}", env) == "x"
    assert interpolate("${EMPTY:-d}", env) == "d" and interpolate("${EMPTY-d}", env) == ""
    assert interpolate("${SET:+alt}", env) == "alt" and interpolate("${EMPTY:+alt}", env) == ""
    assert interpolate("$${NOT}") == "${NOT}"
    assert interpolated_names("${A:-${B}} $${C}") == {"A", "B"}
