"""Security at the edges, each through the real CLI and a real server.

- `server` and `serve` refuse to run as root without --allow-root; a normal user may run them.
- Tokens are stored as their SHA-256 digest only, and checked by looking that digest up (an
  indexed equality on the digest, never a comparison of the secret itself, so the time taken
  says nothing about how many leading characters of a guess are right).
- A token file open to group or others is refused by the CLI and the worker, naming the file.
- TLS: with [server] tls_cert/tls_key the API is HTTPS only; clients trust [server] tls_ca.
- A worker token scoped to some queues acts only for those queues: claim, heartbeat, results
  and release for another queue's work are refused (403).
- A task's command is an argv, run without a shell: `sh -c ...` runs only when asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hpcscale.tokens import write_secret
from tests.conftest import free_port
from tests.services import ServerProcess


def hpcscale(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "hpcscale", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
    )  # fmt: skip


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without HPCSCALE_* overrides, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCSCALE_")}
    return {**env, **extra}


def wait_healthy(url: str, process: subprocess.Popen[bytes], verify: Any = True) -> None:
    """Until /healthz answers 200; fails if the process exits first."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with {process.returncode}"
        try:
            if httpx.get(f"{url}/healthz", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not become healthy")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real `hpcscale server` on SQLite for the tests that only talk to it."""
    root = tmp_path_factory.mktemp("security")
    process = ServerProcess(root=root, database=f"sqlite:///{root}/state.db")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def admin_headers(server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {(server.root / 'token').read_text().strip()}"}


# ---------------------------------------------------------------------- root


@pytest.mark.parametrize("command", ["server", "serve"])
def test_root_is_refused_without_allow_root(command: str, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("not running as root: nothing to refuse (the non-root test covers this)")
    process = ServerProcess(root=tmp_path, database=f"sqlite:///{tmp_path}/state.db")
    process.write_config()
    result = hpcscale(command, "--config", str(process.config_path), env=clean_env())
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: refusing to run as root: a compromised token would own the machine; "
        "run as a normal user, or pass --allow-root"
    ]
    assert not (tmp_path / "token").exists(), "it must refuse before writing a token"


def test_a_normal_user_may_run_the_server() -> None:
    """As root, run it as `nobody` (setpriv) without --allow-root; else as ourselves."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root and there is no `nobody` user to run the server as")
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and there is no setpriv to become `nobody`")
        prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                  "--clear-groups"]  # fmt: skip
    # Not under pytest's tmp_path: its parents are private to root.
    root = Path(tempfile.mkdtemp(prefix="hpcscale-nonroot-"))
    try:
        if prefix:
            os.chown(root, nobody.pw_uid, nobody.pw_gid)
        port = free_port()
        config = root / "config.toml"
        config.write_text(f"""
[server]
url = "http://127.0.0.1:{port}"
bind = "127.0.0.1:{port}"
database = "sqlite:///{root}/state.db"
token_file = "{root}/token"
""")
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "hpcscale", "server", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            env=clean_env(HOME=str(root)), cwd=root,
        )  # fmt: skip
        try:
            wait_healthy(f"http://127.0.0.1:{port}", process)
            if prefix:
                assert (root / "token").stat().st_uid == nobody.pw_uid
        finally:
            stop(process)
    finally:
        shutil.rmtree(root)


# ---------------------------------------------------------------------- tokens at rest


def test_tokens_are_stored_as_digests_only(server: ServerProcess) -> None:
    env = clean_env()
    config = str(server.config_path)
    created = []
    for role, queues in (("worker", ["--queues", "qa"]), ("submitter", [])):
        result = hpcscale("token", "create", "--role", role, *queues, "--config", config, env=env)
        assert result.returncode == 0, result.stderr
        created.append(result.stdout.strip())
    admin = (server.root / "token").read_text().strip()
    stored = b"".join(path.read_bytes() for path in server.root.glob("state.db*"))
    for token in [admin, *created]:
        assert token.encode() not in stored
        # What is there instead: its digest (so this looked at the right bytes).
        assert hashlib.sha256(token.encode()).hexdigest().encode() in stored


def test_a_token_one_character_off_is_refused(server: ServerProcess) -> None:
    token = (server.root / "token").read_text().strip()
    last = "A" if token[-1] != "A" else "B"
    url = f"{server.url}/v1/tasks"
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    for wrong in (token[:-1] + last, token[:-1], token + "A", token.upper()):
        if wrong == token:
            continue
        reply = httpx.get(url, headers={"Authorization": f"Bearer {wrong}"})
        assert reply.status_code == 401, wrong


# ---------------------------------------------------------------------- token files


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_cli_refuses_a_token_file_others_can_read(
    server: ServerProcess, tmp_path: Path, mode: int
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text((server.root / "token").read_text())
    token_file.chmod(mode)
    env = clean_env(HPCSCALE_SERVER__TOKEN_FILE=str(token_file))
    result = hpcscale("status", "--config", str(server.config_path), env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: server.token_file: {token_file} has mode {mode:04o}, open to group or "
        f"others; run chmod 600 {token_file}"
    ]
    token_file.chmod(0o600)
    result = hpcscale("status", "--config", str(server.config_path), env=env)
    assert result.returncode == 0, result.stderr


def test_worker_refuses_a_token_file_others_can_read(server: ServerProcess, tmp_path: Path) -> None:
    token_file = tmp_path / "worker.token"
    write_secret(token_file, (server.root / "token").read_text().strip())
    argv = ["worker", "--url", server.url, "--token-file", str(token_file), "--queues", "idle",
            "--max-empty-claims", "1", "--empty-claim-sleep", "0.1", "--config",
            str(server.config_path)]  # fmt: skip
    token_file.chmod(0o644)
    result = hpcscale(*argv, env=clean_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: --token-file: {token_file} has mode 0644, open to group or others; "
        f"run chmod 600 {token_file}"
    ]
    token_file.chmod(0o600)
    result = hpcscale(*argv, env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------- TLS


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, from the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a self-signed certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def test_tls_serves_https_only_to_clients_that_trust_it(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    https, http = f"https://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    config = tmp_path / "config.toml"
    config.write_text(f"""
[server]
url = "{https}"
bind = "127.0.0.1:{port}"
database = "sqlite:///{tmp_path}/state.db"
token_file = "{tmp_path}/token"
tls_cert = "{cert}"
tls_key = "{key}"
tls_ca = "{cert}"
""")
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "hpcscale", "server", "--allow-root", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=clean_env(),
    )  # fmt: skip
    try:
        trusting = ssl.create_default_context(cafile=cert)
        wait_healthy(https, process, verify=trusting)
        # A client that does not trust the certificate (the system's CAs) is refused ...
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{https}/healthz", verify=ssl.create_default_context())
        # ... and so is plain HTTP on the same port.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{http}/healthz", timeout=5)
        # The CLI and the worker trust [server] tls_ca (the worker through --tls-ca, which
        # job scripts pass on).
        result = hpcscale("status", "--config", str(config), env=clean_env())
        assert result.returncode == 0, result.stderr
        # Without tls_ca the CLI says at once what is wrong: retrying cannot make a certificate
        # trusted.
        untrusting = tmp_path / "untrusting.toml"
        untrusting.write_text(config.read_text().replace(f'tls_ca = "{cert}"', ""))
        started = time.monotonic()
        result = hpcscale("status", "--config", str(untrusting), env=clean_env())
        assert result.returncode != 0 and "not trusted" in result.stderr, result.stderr
        assert time.monotonic() - started < 5
        result = hpcscale(
            "worker", "--url", https, "--token-file", str(tmp_path / "token"),
            "--tls-ca", str(cert), "--queues", "idle", "--max-empty-claims", "1",
            "--empty-claim-sleep", "0.1", "--unreachable-timeout", "3", env=clean_env(),
            cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    finally:
        stop(process)
        log.close()


# ---------------------------------------------------------------------- queue scope


def test_a_queue_scoped_worker_token_acts_only_for_its_queues(server: ServerProcess) -> None:
    api = server.url
    admin = admin_headers(server)

    def token(queue: str) -> dict[str, str]:
        reply = httpx.post(f"{api}/v1/tokens", headers=admin,
                           json={"role": "worker", "queues": [queue], "name": queue})  # fmt: skip
        reply.raise_for_status()
        return {"Authorization": f"Bearer {reply.json()['token']}"}

    def post(headers: dict[str, str], path: str, body: object) -> httpx.Response:
        return httpx.post(f"{api}{path}", headers=headers, json=body)

    a, b = token("scope-a"), token("scope-b")
    for queue in ("scope-a", "scope-b"):
        body = {"tasks": [{"command": ["true"], "queue": queue}]}
        assert post(admin, "/v1/tasks", body).status_code == 201
    worker_a = post(a, "/v1/workers", {"pool": "p", "queues": ["scope-a"]}).json()["id"]
    worker_b = post(b, "/v1/workers", {"pool": "p", "queues": ["scope-b"]}).json()["id"]
    task_b = post(b, f"/v1/workers/{worker_b}/claim", {"queues": ["scope-b"]}).json()[0]
    result_b = {"results": [{"task_id": task_b["id"], "fence": task_b["fence"], "success": True}]}

    # Token A, for queue B's work: registering, claiming, heartbeating, reporting, releasing.
    assert post(a, "/v1/workers", {"pool": "p", "queues": ["scope-b"]}).status_code == 403
    assert post(a, f"/v1/workers/{worker_a}/claim", {"queues": ["scope-b"]}).status_code == 403
    heartbeat = {"running": [task_b["id"]]}
    assert post(a, f"/v1/workers/{worker_b}/heartbeat", heartbeat).status_code == 403
    assert post(a, f"/v1/workers/{worker_b}/results", result_b).status_code == 403
    assert post(a, f"/v1/workers/{worker_a}/results", result_b).status_code in (403, 409)
    assert post(a, f"/v1/workers/{worker_b}/release", {}).status_code == 403
    assert post(a, f"/v1/workers/{worker_b}/deregister", {}).status_code == 403

    # ... while its own queue's work goes through, and B's task is still B's to report.
    task_a = post(a, f"/v1/workers/{worker_a}/claim", {"queues": ["scope-a"]}).json()[0]
    reply = post(a, f"/v1/workers/{worker_a}/heartbeat", {"running": [task_a["id"]]})
    assert reply.status_code == 200
    assert reply.json()["renewed"] == [task_a["id"]]
    result_a = {"results": [{"task_id": task_a["id"], "fence": task_a["fence"], "success": True}]}
    reply = post(a, f"/v1/workers/{worker_a}/results", result_a)
    assert reply.json()["outcomes"] == [{"task_id": task_a["id"], "outcome": "succeeded"}]
    reply = post(b, f"/v1/workers/{worker_b}/results", result_b)
    assert reply.json()["outcomes"] == [{"task_id": task_b["id"], "outcome": "succeeded"}]


# ---------------------------------------------------------------------- task payloads


def test_a_task_command_is_an_argv_not_a_shell_string(
    server: ServerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "injected"
    # Only harmless words: were they ever given to a shell, the worst is a marker file. (Never
    # put a destructive command here: a regression would run it as whoever runs the tests.)
    literal = ["echo", f"$(touch {marker})", ";", "touch", str(marker), f"`touch {marker}`", "$PWD"]
    shell = ["sh", "-c", f"echo shell:$((6*7)) > {tmp_path}/shell.out"]
    config, env = str(server.config_path), clean_env()
    ids = []
    for argv in (literal, shell):
        result = hpcscale("submit", "--queue", "payload", "--json", "--config", config, "--",
                          *argv, env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        ids += json.loads(result.stdout)["ids"]
    out = tmp_path / "out"
    result = hpcscale(
        "worker", "--url", server.url, "--token-file", str(server.root / "token"),
        "--queues", "payload", "--max-empty-claims", "1", "--empty-claim-sleep", "0.1",
        "--output-dir", str(out), env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (printed,) = out.glob(f"task-{ids[0]}.*out")
    assert printed.read_text() == " ".join(literal[1:]) + "\n"
    assert not marker.exists()
    assert (tmp_path / "shell.out").read_text() == "shell:42\n"  # sh -c when asked for
