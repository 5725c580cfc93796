#!/usr/bin/env bash
# Validates the Helm chart charts/tern without a helm binary or a cluster:
#   - `helm lint --strict` and `helm template` (the Helm SDK bundled by the PyPI package
#     helm-python-sdk) for the default values and every charts/tern/examples/*.yaml;
#   - every rendered manifest against the Kubernetes OpenAPI schemas, strict (unknown fields
#     are errors; kubernetes-validate bundles the schemas), for the newest and the oldest
#     Kubernetes version the chart supports;
#   - every rendered tern.toml, with the Secret's TERN_* variables, through `tern config`
#     (the real configuration loader), when a tern binary is at hand ($TERN_BIN, else
#     ${CARGO_TARGET_DIR:-target}/debug/tern; `make test` builds it first; required when CI
#     is set);
#   - negative cases that must fail (bad values, a secret in the ConfigMap, a role in two
#     groups, an unknown field in a manifest, an unknown configuration key), so the checks
#     above are known to bite.
# The Python tools live in a venv under target/chart-venv, created once (PyPI only).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${CHART_VENV:-target/chart-venv}
# Pinned: the whole dependency closure, so every machine validates with the same schemas.
requirements='helm-python-sdk==0.2.2
kubernetes-validate==1.37.0
attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.3
PyYAML==6.0.3
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0'

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$requirements" ]; then
  echo "chart-test: creating $venv (helm-python-sdk, kubernetes-validate from PyPI)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  printf '%s\n' "$requirements" >"$venv/requirements.txt"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
    -r "$venv/requirements.txt"
  printf '%s' "$requirements" >"$venv/.requirements"
fi

tern_bin=${TERN_BIN:-${CARGO_TARGET_DIR:-target}/debug/tern}
exec "$venv/bin/python" - charts/tern "$tern_bin" <<'PY'
import base64
import copy
import glob
import os
import subprocess
import sys
import tempfile
import tomllib

import helm_python as helm
import kubernetes_validate.utils as kv
import yaml

CHART, TERN_BIN = sys.argv[1], os.path.abspath(sys.argv[2])
RELEASE, NAMESPACE = "tern", "lora"
# The newest schemas kubernetes-validate ships, and the oldest Kubernetes the chart supports
# (Chart.yaml kubeVersion).
KUBE_VERSIONS = [kv.latest_version(), "1.27.0"]
HAVE_TERN = os.access(TERN_BIN, os.X_OK)
if not HAVE_TERN and os.environ.get("CI"):
    # `make test` builds the binary before this script runs: missing in CI is a fault.
    sys.exit(f"chart-test: no tern binary at {TERN_BIN} (CI is set); build it or set TERN_BIN")

passed, failed = 0, 0


def check(name, fn):
    global passed, failed
    try:
        detail = fn()
        passed += 1
        print(f"ok    {name}" + (f": {detail}" if detail else ""))
    except Exception as e:  # report every failure, not only the first
        failed += 1
        print(f"FAIL  {name}: {e}")


def must_fail(fn, expect):
    """Runs fn, which must raise an error whose text contains `expect`."""
    try:
        fn()
    except Exception as e:
        if expect not in str(e):
            raise AssertionError(f"failed, but not for the expected reason {expect!r}: {e}")
        return f"rejected ({expect})"
    raise AssertionError(f"accepted; expected a failure mentioning {expect!r}")


def lint(values):
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE,
                       kube_version="v" + KUBE_VERSIONS[0])
    # Severity 1 is informational (e.g. "icon is recommended"); warnings and errors fail.
    bad = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
    if bad:
        raise AssertionError(f"helm lint: {bad}")


def render(values):
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def validate(doc, version):
    if not isinstance(doc.get("apiVersion"), str) or not isinstance(doc.get("kind"), str):
        raise AssertionError(f"not a Kubernetes object: {str(doc)[:80]}")
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        raise AssertionError(f"{doc['kind']}/{doc['metadata'].get('name')} against "
                             f"Kubernetes {version}: {path}: {e.message}") from None
    except kv.SchemaNotFoundError as e:
        raise AssertionError(e.message) from None


# What secrets.existingSecret names stands in for: the keys README.md documents, in the
# documented format, with test values.
EXISTING_SECRET = {
    "TERN_CLUSTER__KEYS": '["0123456789abcdef-test-cluster-key"]',
    "TERN_STORE__POSTGRES__URL": '"postgres://tern:secret@pg-postgresql:5432/tern"',
    "TERN_JOIN_SERVER__ROOT_KEY_KEK": '"00000000000000000000000000000000"',
    "TERN_JOIN_SERVER__KEKS": '{"ns:local"="0102030405060708090a0b0c0d0e0f10",'
                              '"as:local"="11121314151617181920212223242526"}',
    "TERN_NETWORK_SERVER__KEY_ENCRYPTION_KEYS": '{"ns:local"="0102030405060708090a0b0c0d0e0f10"}',
    "TERN_APPLICATION_SERVER__KEKS": '{"as:local"="11121314151617181920212223242526"}',
}


def secret_env(docs):
    """The TERN_* variables of the Secret the pods load: the chart's, decoded, or the
    stand-in for an existing one."""
    env = {}
    for _, d in docs:
        if d["kind"] == "Deployment":
            for source in d["spec"]["template"]["spec"]["containers"][0].get("envFrom", []):
                name = source.get("secretRef", {}).get("name")
                if name and not any(x["kind"] == "Secret" and x["metadata"]["name"] == name
                                    for _, x in docs):
                    env.update(EXISTING_SECRET)
    for _, d in docs:
        if d["kind"] == "Secret":
            for k, v in (d.get("data") or {}).items():
                if k.startswith("TERN_"):
                    env[k] = base64.b64decode(v).decode()
    return env


def tern_config(toml_text, env):
    """Loads a tern.toml (and env) with the real loader; raises with its message on error."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tern.toml")
        with open(path, "w") as f:
            f.write(toml_text)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TERN_")}
        clean.update(env)
        r = subprocess.run([TERN_BIN, "config", "--config", path, "--data-dir",
                            os.path.join(tmp, "data")],
                           env=clean, capture_output=True, text=True, timeout=60, cwd=tmp)
        if r.returncode != 0:
            raise AssertionError(f"tern config: exit {r.returncode}: {r.stderr.strip()}")


def deployment_env(d):
    """The literal TERN_* env of a Deployment, with the downward-API helpers filled in."""
    env = {}
    for e in d["spec"]["template"]["spec"]["containers"][0].get("env", []):
        if e["name"].startswith("TERN_") and "value" in e:
            env[e["name"]] = (e["value"].replace("$(POD_NAME)", "tern-gs-5d8f-abcde")
                              .replace("$(POD_IP)", "10.1.2.3"))
    return env


def check_case(label, values):
    docs = []

    def do_lint():
        lint(values)

    def do_render():
        docs.extend(render(values))
        kinds = {}
        for _, d in docs:
            kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
        return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))

    def do_validate():
        if not docs:
            raise AssertionError("nothing rendered")
        for version in KUBE_VERSIONS:
            for _, d in docs:
                validate(d, version)
        return f"{len(docs)} manifests, strict, Kubernetes {' and '.join(KUBE_VERSIONS)}"

    def do_config():
        secrets = secret_env(docs)
        deployments = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Deployment"}
        maps = [d for _, d in docs if d["kind"] == "ConfigMap"]
        if len(maps) != len(deployments):
            raise AssertionError(f"{len(maps)} ConfigMaps for {len(deployments)} Deployments")
        for cm in maps:
            text = cm["data"]["tern.toml"]
            tomllib.loads(text)  # valid TOML whatever happens below
            for word in ("keys =", "password", "root-key-kek =", "postgres://", "token-signing-key"):
                if word in text:
                    raise AssertionError(f"{cm['metadata']['name']}: secret-looking {word!r} in the ConfigMap")
            if HAVE_TERN:
                name = cm["metadata"]["name"].removesuffix("-config")
                env = dict(secrets)
                env.update(deployment_env(deployments[name]))
                tern_config(text, env)
        return f"{len(maps)} tern.toml loaded by {TERN_BIN}" if HAVE_TERN else \
            f"{len(maps)} tern.toml parsed (no tern binary at {TERN_BIN}: loader check skipped)"

    check(f"{label}: helm lint --strict", do_lint)
    check(f"{label}: helm template", do_render)
    check(f"{label}: kubernetes-validate", do_validate)
    check(f"{label}: tern.toml", do_config)


def values_of(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


# The default values and every topology's example.


def package():
    with tempfile.TemporaryDirectory() as tmp:
        path = helm.package(CHART, destination=tmp)
        return os.path.basename(str(path))


check("helm package", package)
check_case("default values", {})
examples = sorted(glob.glob(os.path.join(CHART, "examples", "*.yaml")))


def has_examples():
    if not examples:
        raise AssertionError(f"no {CHART}/examples/*.yaml")
    return f"{len(examples)} files"


check("examples present", has_examples)
for path in examples:
    check_case(os.path.relpath(path, CHART), values_of(path))

# Every option the examples leave out, in one process with three replicas: etcd with
# authentication, NATS with credentials, TLS for MQTT and Basics Station, NodePort, a PDB in
# percent, float and integer options, a file-backed KEK, extra secret variables.
check_case("every option (all, 3 replicas)", {
    "allInOne": {"replicas": 3},
    "postgresql": {"enabled": True, "schema": "tern"},
    "etcd": {"enabled": True, "endpoints": ["etcd:2379"], "username": "tern"},
    "nats": {"enabled": True},
    "secrets": {"clusterKeys": ["k" * 20, "old-cluster-key-kept"], "rootKeyKek": "0" * 64,
                "networkServerKek": "1" * 32, "applicationServerKek": "2" * 32,
                "postgresUrl": "postgres://tern:pw@pg:5432/tern", "etcdPassword": "pw",
                "natsCredentials": "-----BEGIN NATS USER JWT-----\n", "tokenSigningKey": "t" * 40,
                "extra": {"TERN_LOG__LEVEL": "debug"}},
    "mqtt": {"tls": {"secretName": "tern-mqtt-tls"}},
    "basicStation": {"tls": {"secretName": "tern-lns-tls"}},
    "service": {"udp": {"type": "NodePort", "nodePort": 31700},
                "mqtt": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8"]}},
    "groupDefaults": {"podDisruptionBudget": {"minAvailable": "50%"},
                      "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}]},
    "config": {"network-server": {"adr-margin": 12.5, "rx1-delay": 2,
                                  "dev-addr-prefixes": ["26000000/7"]},
               "gateway-server": {"rate-limit": {"messages-per-second": 20, "burst": 50}}},
})

# Negative cases: each must be rejected, and for the stated reason.
split = values_of(os.path.join(CHART, "examples", "split.yaml"))


def render_with(values):
    return lambda: render(values)


check("negative: unknown topology refused by the schema",
      lambda: must_fail(render_with({"topology": "mesh"}), "value must be one of"))
check("negative: unknown value key refused by the schema",
      lambda: must_fail(render_with({"replicaCount": 3}), "additional properties"))
check("negative: short cluster key refused by the schema",
      lambda: must_fail(render_with({"secrets": {"clusterKeys": ["short"]}}), "minLength"))
check("negative: secret in config (ConfigMap) refused by the schema",
      lambda: must_fail(render_with({"config": {"cluster": {"keys": ["x" * 20]}}}),
                        "secrets.clusterKeys"))
check("negative: helm lint reports a bad value",
      lambda: must_fail(lambda: lint({"service": {"udp": {"type": "Balanced"}}}), "value must be one of"))
two_ns = copy.deepcopy(split)
two_ns["groups"]["as"]["roles"] = ["as", "ns"]
check("negative: a role in two groups refused by the templates",
      lambda: must_fail(render_with(two_ns), "each role runs in one group"))
scaled_ns = copy.deepcopy(split)
scaled_ns["groups"]["ns-js"]["replicas"] = 2
check("negative: two Network Servers without etcd refused by the templates",
      lambda: must_fail(render_with(scaled_ns), "needs etcd.enabled"))
check("negative: split topology without PostgreSQL refused",
      lambda: must_fail(render_with({"topology": "split"}), "postgresql/enabled"))


def manifest_mutation(mutate, expect):
    def run():
        docs = render({})
        dep = copy.deepcopy(next(d for _, d in docs if d["kind"] == "Deployment"))
        mutate(dep)
        return must_fail(lambda: validate(dep, KUBE_VERSIONS[0]), expect)
    return run


check("negative: unknown field in a manifest refused (strict)",
      manifest_mutation(lambda d: d["spec"]["template"]["spec"]["containers"][0]
                        .__setitem__("livenessProbes", {}), "livenessProbes"))
check("negative: wrongly typed field in a manifest refused",
      manifest_mutation(lambda d: d["spec"].__setitem__("replicas", "two"), "replicas"))
check("negative: unknown kind refused",
      lambda: must_fail(lambda: validate({"apiVersion": "tern.io/v1", "kind": "Gateway",
                                          "metadata": {"name": "x"}}, KUBE_VERSIONS[0]),
                        "Couldn't find schema"))
if HAVE_TERN:
    check("negative: unknown key in tern.toml refused by tern config",
          lambda: must_fail(lambda: tern_config("[log]\nlevel = \"info\"\ncolour = true\n", {}),
                            "colour"))

print(f"chart-test: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
