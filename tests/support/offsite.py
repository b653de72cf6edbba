"""Real off-site endpoints for tests: an OpenSSH server on loopback (its own port, host key
and a user who logs in with a key) and an S3-compatible endpoint (moto's server: no
MinIO or other S3 server is packaged for this machine)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.servers import free_port, spawn, stop_group

SFTP_USER = "xiehedr"


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}: {log.read_text()[-2000:]}")


def _user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SFTP_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*", SFTP_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SFTP_USER)


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )


class SftpServer:
    """sshd on 127.0.0.1:<port> for user xiehedr; `root` is the remote directory."""

    def __init__(self, workdir: Path, tag: str) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        user = _user()
        self.root = Path(user.pw_dir) / tag
        self.root.mkdir(mode=0o700)
        ssh = Path(user.pw_dir) / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        self.key_file = self.dir / "client_key"
        _keygen(self.key_file)
        _keygen(self.dir / "host_key")
        (ssh / "authorized_keys").write_text(Path(f"{self.key_file}.pub").read_text())
        for path in (ssh, ssh / "authorized_keys", self.root):
            os.chown(path, user.pw_uid, user.pw_gid)
        host_pub = (self.dir / "host_key.pub").read_text().split()
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir / 'host_key'}\n"
            f"PidFile {self.dir / 'sshd.pid'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin no\n"
            f"AllowUsers {SFTP_USER}\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
        self.log = self.dir / "sshd.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def url(self) -> str:
        return (
            f"sftp://{SFTP_USER}@127.0.0.1:{self.port}{self.root}"
            f"?key_file={self.key_file}&known_hosts_file={self.known_hosts}"
        )

    def start(self) -> None:
        argv = ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)]
        self.proc = spawn(argv, dict(os.environ), self.log)
        wait_port(self.port, self.proc, self.log)

    def kill(self) -> None:
        """The listener and every open session: a connection cut mid-transfer."""
        stop_group(self.proc)
        subprocess.run(["pkill", "-KILL", "-u", SFTP_USER], check=False)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class S3Server:
    """moto's S3-compatible server on 127.0.0.1:<port>, with fixed test credentials."""

    ACCESS_KEY = "XIEHETESTACCESSKEY"
    SECRET_KEY = "s3-secret-Pq8/not-in-any-log"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "moto.log"
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            shutil.which("moto_server") or "moto_server",
            "-H",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        self.proc = spawn(argv, dict(os.environ), self.log)
        wait_port(self.port, self.proc, self.log)

    def url(self, bucket: str, prefix: str) -> str:
        return f"s3://{bucket}/{prefix}?endpoint=http://127.0.0.1:{self.port}&region=us-east-1"

    def close(self) -> None:
        stop_group(self.proc)
