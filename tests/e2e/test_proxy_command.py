"""`runewarp proxy` with real programs: OpenSSH's ssh and sshd (key-only auth made here) through
the proxy, a Server and a Client with a terminate Service whose Local backend is sshd;
`openssl s_server` as a TLS server that requires a client certificate (--cert/--key)."""

import concurrent.futures
import hashlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from runewarp import harness

from ..conftest import Proc, free_port, run_cli, runewarp_cmd
from .helpers import TCPBackend

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180),
              pytest.mark.skipif(not shutil.which("ssh") or not os.path.exists("/usr/sbin/sshd"),
                                 reason="needs OpenSSH (ssh, /usr/sbin/sshd)")]
SSH_HOST = "ssh.example.com"
HALF_HOST = "half.example.com"
USER = os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name


class Sshd:
    """sshd in the foreground on a free loopback port: host key and user key made here."""

    def __init__(self, folder):
        folder.mkdir()
        self.folder = folder
        self.key = folder / "user_key"
        for path in (folder / "host_key", self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path],
                           check=True, timeout=30)
        shutil.copy(f"{self.key}.pub", folder / "authorized_keys")
        self.port = free_port()
        config = folder / "sshd_config"
        config.write_text(f"ListenAddress 127.0.0.1:{self.port}\nHostKey {folder / 'host_key'}\n"
                          f"AuthorizedKeysFile {folder / 'authorized_keys'}\n"
                          "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                          "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
                          "MaxStartups 100\nSubsystem sftp internal-sftp\n"
                          f"PidFile {folder / 'sshd.pid'}\n")
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation folder
        self.proc = harness.Process(["/usr/sbin/sshd", "-D", "-e", "-f", config], name="sshd")
        self.proc.wait_for("Server listening on 127.0.0.1")

    def stop(self):
        self.proc.stop()


@pytest.fixture
def sshd(tmp_path):
    server = Sshd(tmp_path / "sshd")
    yield server
    server.stop()


class ReplyAfterEOF(TCPBackend):
    """Reads to EOF, then answers how much it got: only a half-close gets an answer."""

    def serve(self, conn):
        received = 0
        while chunk := conn.recv(65536):
            received += len(chunk)
        conn.sendall(b"got %d" % received)


@pytest.fixture
def site(deployment, sshd):
    """Server and Client with terminate Services SSH_HOST -> sshd and HALF_HOST ->
    ReplyAfterEOF: (port, Public hostname CA)."""
    half = ReplyAfterEOF()
    identity = deployment.identity("client-a")
    deployment.start_server([("ssh", [SSH_HOST, HALF_HOST], [identity])])
    certs = deployment.dir / "public-cert"
    for hostname in (SSH_HOST, HALF_HOST):
        run_cli("client", "public-cert", "init", "--dir", certs, "--hostname", hostname)
    path = deployment.client_config("client-a", [
        ([SSH_HOST], f"127.0.0.1:{sshd.port}", "terminate"),
        ([HALF_HOST], half.address, "terminate")], public_cert_dir=certs)
    client = Proc(["client", "-c", path], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for("tunnel-connection-established")
    yield deployment.public_port, certs / "public-ca.crt"
    half.close()


def proxy_args(port, ca, *extra):
    return ["proxy", "--hostname", SSH_HOST, "--server", f"127.0.0.1:{port}", "--ca-file", ca,
            *map(str, extra)]


def ssh(sshd, command, proxy=None, port=None, stdin=None, timeout=60):
    """ssh to the sshd, through `proxy` (runewarp proxy arguments, --stdio) or to `port`."""
    options = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
               "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
               "-i", str(sshd.key)]
    if proxy is not None:
        options += ["-o", "ProxyCommand=" + shlex.join(runewarp_cmd(*proxy))]
    else:
        options += ["-p", str(port)]
    return subprocess.run(["ssh", *options, f"{USER}@{SSH_HOST if proxy else '127.0.0.1'}",
                           command], stdin=stdin if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, timeout=timeout)


def start_proxy(processes, *args):
    """`runewarp proxy --listen 0 ARGS`: (process, the port it listens on)."""
    proc = Proc(list(args) + ["--listen", "0"])
    processes.append(proc)
    return proc, int(proc.wait_for(r"proxy-listening address=127\.0\.0\.1:(\d+)").group(1))


def test_ssh_runs_a_command_through_proxy_stdio(site, sshd):
    port, ca = site
    done = ssh(sshd, "echo hello", proxy=proxy_args(port, ca, "--stdio"))
    assert (done.returncode, done.stdout) == (0, b"hello\n"), done.stderr


def test_ssh_through_proxy_listen_and_20_at_once(site, sshd, processes):
    port, ca = site
    _, local = start_proxy(processes, *proxy_args(port, ca))
    done = ssh(sshd, "echo hello", port=local)
    assert (done.returncode, done.stdout) == (0, b"hello\n"), done.stderr
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        runs = list(pool.map(lambda i: ssh(sshd, f"echo run {i}", port=local), range(20)))
    assert [(r.returncode, r.stdout) for r in runs] == [(0, b"run %d\n" % i) for i in range(20)]


def test_a_64_mib_scp_is_byte_identical(site, sshd, tmp_path):
    port, ca = site
    source, copy = tmp_path / "big", tmp_path / "copy"
    source.write_bytes(os.urandom(64 * 1024 * 1024))
    proxy = "ProxyCommand=" + shlex.join(runewarp_cmd(*proxy_args(port, ca, "--stdio")))
    done = subprocess.run(["scp", "-q", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
                    "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", proxy,
                    "-i", sshd.key, source, f"{USER}@{SSH_HOST}:{copy}"], capture_output=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()


def test_a_half_close_crosses_to_the_backend(site, sshd, tmp_path):
    """`cat > file` ends only when its stdin ends, and the exit status still comes back.
    ssh carries that EOF inside its own protocol; the TCP half-close (close_notify, then a
    FIN to the Local backend) is test_a_tcp_half_close_crosses_both_ways."""
    port, ca = site
    source, target = tmp_path / "input", tmp_path / "written"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    with open(source, "rb") as stdin:
        done = ssh(sshd, f"cat > {target}; echo written", proxy=proxy_args(port, ca, "--stdio"),
                   stdin=stdin)
    assert (done.returncode, done.stdout) == (0, b"written\n"), done.stderr
    assert target.read_bytes() == source.read_bytes()


def test_a_tcp_half_close_crosses_both_ways(site, processes):
    """A local FIN becomes close_notify, then a FIN to the Local backend, whose answer comes
    back after it; its FIN ends the Visitor's stream.  Through --stdio and --listen."""
    port, ca = site
    payload = os.urandom(1024 * 1024 + 3)
    args = ["proxy", "--hostname", HALF_HOST, "--server", f"127.0.0.1:{port}", "--ca-file", ca]
    done = subprocess.run(runewarp_cmd(*args, "--stdio"), input=payload, capture_output=True,
                          timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"got %d" % len(payload), b"")
    _, local = start_proxy(processes, *args)
    with socket.create_connection(("127.0.0.1", local), timeout=20) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer == b"got %d" % len(payload)


def test_term_closes_the_listener_and_lets_open_connections_end(site, processes):
    port, ca = site
    proxy, local = start_proxy(processes, "proxy", "--hostname", HALF_HOST, "--server",
                               f"127.0.0.1:{port}", "--ca-file", ca)
    with socket.create_connection(("127.0.0.1", local), timeout=20) as sock:
        sock.sendall(b"before")  # accepted, maybe still in its TLS handshake: it is waited for
        proxy.signal(signal.SIGTERM)
        proxy.wait_for("proxy-stopping connections=1")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", local), timeout=5).close()
        sock.sendall(b" and after")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer == b"got 16"
    assert proxy.popen.wait(15) == 0


def test_the_listen_proxy_serves_again_after_a_server_restart(deployment, site, sshd, processes):
    port, ca = site
    proxy, local = start_proxy(processes, *proxy_args(port, ca))
    assert ssh(sshd, "echo before", port=local).stdout == b"before\n"
    server = deployment.processes[0]
    server.stop()
    config = deployment.dir / "server.toml"
    config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    client = deployment.processes[1]
    mark = len(client.lines)
    restarted = Proc(["server", "-c", config], env=deployment.env)
    processes.append(restarted)
    client.wait_for("tunnel-connection-established", timeout=60, start=mark)
    done = ssh(sshd, "echo after", port=local)
    assert (done.returncode, done.stdout) == (0, b"after\n"), done.stderr
    assert proxy.popen.poll() is None


def test_a_service_with_visitor_ca_file_lets_only_its_certificate_holders_through(
        deployment, sshd, tmp_path):
    """The whole chain: `runewarp proxy --cert/--key` to a terminate Service whose
    visitor-ca-file comes from `runewarp client visitor-ca init`; ssh gets through with a
    certificate from `visitor-cert issue`, and not without one or with another CA's."""
    for name in ("visitors", "strangers"):
        run_cli("client", "visitor-ca", "init", "--dir", tmp_path / name)
    run_cli("client", "visitor-cert", "issue", "--name", "alice", "--dir", tmp_path / "visitors",
            "--out-dir", tmp_path / "alice")
    run_cli("client", "visitor-cert", "issue", "--name", "mallory", "--dir",
            tmp_path / "strangers", "--out-dir", tmp_path / "mallory")
    identity = deployment.identity("client-a")
    deployment.start_server([("ssh", [SSH_HOST], [identity])])
    certs = deployment.dir / "public-cert"
    run_cli("client", "public-cert", "init", "--dir", certs, "--hostname", SSH_HOST)
    backend = f'"127.0.0.1:{sshd.port}"'
    path = deployment.client_config("client-a", [([SSH_HOST], f"127.0.0.1:{sshd.port}",
                                                  "terminate")], public_cert_dir=certs)
    ca = tmp_path / "visitors" / "visitor-ca.crt"
    path.write_text(path.read_text().replace(backend, f'{backend}\nvisitor-ca-file = "{ca}"', 1))
    client = Proc(["client", "-c", path], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for("tunnel-connection-established")
    args = proxy_args(deployment.public_port, certs / "public-ca.crt", "--stdio")
    for refused in ([], ["--cert", tmp_path / "mallory/mallory.crt",
                         "--key", tmp_path / "mallory/mallory.key"]):
        done = ssh(sshd, "echo hello", proxy=args + list(map(str, refused)))
        assert done.returncode != 0 and done.stdout == b"", done
        assert b"it requires a client certificate it trusts (--cert/--key)" in done.stderr, done
    done = ssh(sshd, "echo hello", proxy=args + ["--cert", str(tmp_path / "alice/alice.crt"),
                                                 "--key", str(tmp_path / "alice/alice.key")])
    assert (done.returncode, done.stdout) == (0, b"hello\n"), done


def stdio_error(*args, stdin=b"hello\n", env=None):
    done = subprocess.run(runewarp_cmd("proxy", "--stdio", *map(str, args)), input=stdin,
                          capture_output=True, timeout=60, env=env)
    assert done.returncode == 1, done
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_each_error_a_visitor_meets_is_one_line(site, tmp_path, deployment):
    port, ca = site
    assert stdio_error("--hostname", "nowhere.invalid") == \
        "error: nowhere.invalid: the name does not resolve (Name or service not known)"
    closed = free_port()
    assert stdio_error("--hostname", SSH_HOST, "--server", f"127.0.0.1:{closed}") == \
        f"error: 127.0.0.1:{closed}: connection refused (no Server listens there)"
    other = tmp_path / "other"
    run_cli("client", "public-cert", "init", "--dir", other, "--hostname", SSH_HOST)
    assert stdio_error(*proxy_args(port, other / "public-ca.crt")[1:]) == (
        f"error: the certificate for {SSH_HOST} is not trusted by --ca-file "
        f"{other / 'public-ca.crt'} (self-signed certificate in certificate chain)")
    assert stdio_error("--hostname", SSH_HOST, "--server", f"127.0.0.1:{port}") == (
        f"error: the certificate for {SSH_HOST} is not trusted by the system store "
        "(self-signed certificate in certificate chain)")
    # The Server's own certificate, asked for by another name: valid chain, wrong name.
    assert stdio_error("--hostname", "ssh2.example.com", "--server", f"127.0.0.1:{port}",
                       "--ca-file", deployment.ca_file) == (
        f"error: the Server at 127.0.0.1:{port} has no Service for ssh2.example.com: it closed "
        "the connection during the TLS handshake")


def test_a_hostname_mismatch_is_named(tmp_path):
    """A Service certificate for another name (openssl s_server presenting it)."""
    certs = tmp_path / "certs"
    run_cli("client", "public-cert", "init", "--dir", certs, "--hostname", "other.example.com")
    with SServer(certs, "other.example.com") as port:
        assert stdio_error("--hostname", SSH_HOST, "--server", f"127.0.0.1:{port}", "--ca-file",
                           certs / "public-ca.crt") == (
            f"error: the certificate the Server presented is not for {SSH_HOST} "
            "(hostname mismatch)")


class SServer:
    """`openssl s_server -rev` on a free port with a certificate made by our CLI; with
    `client_ca`, it requires a client certificate that CA issued."""

    def __init__(self, certs, hostname, client_ca=None):
        folder = certs / hostname
        self.port = free_port()
        cmd = ["openssl", "s_server", "-accept", f"127.0.0.1:{self.port}", "-rev", "-quiet",
               "-cert", folder / "public.crt", "-key", folder / "public.key"]
        if client_ca is not None:
            cmd += ["-Verify", "1", "-verify_return_error", "-CAfile", client_ca]
        self.proc = harness.Process(cmd, name="s_server", stdout=subprocess.PIPE)

    def __enter__(self):
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self.port
            except OSError:
                if self.proc.popen.poll() is not None:
                    break
                time.sleep(0.05)
        raise AssertionError(self.proc.log())

    def __exit__(self, *exc):
        self.proc.kill()


def client_certificate(folder, name):
    """A CA and a client certificate it issued, made with `openssl req` (our CLI makes
    server-side certificates only): (ca, cert, key)."""
    folder.mkdir()
    ca, ca_key, cert, key, csr = (folder / n for n in ("ca.pem", "ca.key", "cert.pem", "key.pem",
                                                      "req.csr"))
    run = lambda *a: subprocess.run(["openssl", *map(str, a)], check=True, timeout=30,  # noqa: E731
                                    capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", ca_key, "-out", ca, "-subj", f"/CN={name} CA", "-days", "2")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
        "-out", csr, "-subj", f"/CN={name}")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
        "-days", "2")
    return ca, cert, key


def test_a_client_certificate_is_presented(tmp_path):
    certs = tmp_path / "certs"
    run_cli("client", "public-cert", "init", "--dir", certs, "--hostname", SSH_HOST)
    ca, cert, key = client_certificate(tmp_path / "good", "visitor")
    _, other_cert, other_key = client_certificate(tmp_path / "bad", "stranger")
    with SServer(certs, SSH_HOST, client_ca=ca) as port:
        base = ("--hostname", SSH_HOST, "--server", f"127.0.0.1:{port}", "--ca-file",
                certs / "public-ca.crt")
        assert re.fullmatch(
            rf"error: the Service for {SSH_HOST} refused the connection \(.*certificate.*\): it "
            r"requires a client certificate it trusts \(--cert/--key\)", stdio_error(*base))
        assert re.fullmatch(
            rf"error: the Service for {SSH_HOST} refused the connection \(.*\): it requires a "
            r"client certificate it trusts \(--cert/--key\)",
            stdio_error(*base, "--cert", other_cert, "--key", other_key))
        proxy = subprocess.Popen(runewarp_cmd("proxy", "--stdio", *map(str, base), "--cert",
                                              cert, "--key", key), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            proxy.stdin.write(b"olleh\n")
            proxy.stdin.flush()
            assert proxy.stdout.readline() == b"hello\n"
        finally:
            proxy.kill()
            proxy.wait(10)


def test_the_config_file_serves_two_forwards(site, sshd, tmp_path, processes):
    port, ca = site
    ports = free_port(), free_port()
    config = tmp_path / "proxy.toml"
    config.write_text("".join(
        f'[[proxy.forwards]]\nhostname = "{SSH_HOST}"\nlisten = "{p}"\n'
        f'server = "127.0.0.1:{port}"\nca-file = "{ca}"\n\n' for p in ports))
    proc = Proc(["proxy", "-c", config])
    processes.append(proc)
    proc.wait_count("proxy-listening", 2)
    for local in ports:
        done = ssh(sshd, "echo hello", port=local)
        assert (done.returncode, done.stdout) == (0, b"hello\n"), done.stderr
    assert proc.stop() == 0


@pytest.mark.parametrize("text, line", [
    ('[[proxy.forwards]]\nhostname = "a.example.com"\n',
     "proxy.forwards[0].listen: required key is missing ([IP:]PORT)"),
    ('[[proxy.forwards]]\nhostname = "a.example.com"\nlisten = "localhost:22"\n',
     "proxy.forwards[0].listen: 'localhost:22': host must be a literal IP address, e.g. "
     "0.0.0.0:443 or [::]:443"),
    ('[[proxy.forwards]]\nhostname = "a.example.com"\nlisten = "2022"\ncert = "c.pem"\n',
     "proxy.forwards[0].cert: cannot read {dir}/c.pem"),
    ('[[proxy.forwards]]\nhostname = "a.example.com"\nlisten = "2022"\ncert = "p.toml"\n',
     "proxy.forwards[0].cert: needs proxy.forwards[0].key as well (a client certificate and its "
     "key)"),
    ('[[proxy.forwards]]\nhostname = "a.example.com"\nlisten = "2022"\n\n'
     '[[proxy.forwards]]\nhostname = "b.example.com"\nlisten = "127.0.0.1:2022"\n',
     "proxy.forwards[1].listen: '127.0.0.1:2022' is already used by proxy.forwards[0].listen"),
    ('[[proxy.forwards]]\nhostname = "a.example.com"\nlisten = "2022"\nport = 1\n',
     "proxy.forwards[0].port: unknown key"),
    ('[proxy]\n', "proxy.forwards: at least one [[proxy.forwards]] is required"),
])
def test_config_errors_name_file_and_key(tmp_path, text, line):
    config = tmp_path / "p.toml"
    config.write_text(text)
    done = run_cli("proxy", "-c", config, check=False)
    assert (done.returncode, done.stderr) == (2, f"error: {config}: {line.format(dir=tmp_path)}\n")


def test_cert_without_key_is_a_usage_error():
    done = run_cli("proxy", "--hostname", SSH_HOST, "--stdio", "--cert", sys.executable,
                   check=False)
    assert (done.returncode, done.stderr) == (
        2, "error: command line: --cert: needs --key as well (a client certificate and its key)\n")


def test_a_listen_port_in_use_is_one_line_naming_the_flag_or_key(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run_cli("proxy", "--hostname", SSH_HOST, "--listen", port, check=False)
        assert (done.returncode, done.stderr) == (
            1, f"error: command line: --listen: 127.0.0.1:{port}: address already in use\n")
        config = tmp_path / "p.toml"
        config.write_text(f'[[proxy.forwards]]\nhostname = "{SSH_HOST}"\nlisten = "{port}"\n')
        done = run_cli("proxy", "-c", config, check=False)
        assert (done.returncode, done.stderr) == (
            1, f"error: {config}: proxy.forwards[0].listen: 127.0.0.1:{port}: address already in "
               "use\n")
