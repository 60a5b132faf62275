"""A throwaway one-node Slurm cluster on 127.0.0.1 for tests (Debian's slurm-wlm + munge).

Everything lives in a temp dir: munged runs with its own key, socket, pid, log and seed
files; slurm.conf / cgroup.conf are read through ``SLURM_CONF`` (daemons and clients,
submitit's sbatch included), and slurm.conf points Slurm at that munge socket. So nothing
is written under /etc/slurm or /etc/munge. Daemons are stopped by the PIDs in their pid
files, never by name.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "munged", "munge")


class SlurmUnavailable(RuntimeError):
    """Slurm could not be installed or started here (the caller may skip)."""


def ensure_installed(timeout: float = 600) -> None:
    """apt-get install slurm-wlm and munge unless their binaries are already there."""
    if all(shutil.which(b, path=_sbin_path()) for b in BINARIES):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SlurmUnavailable("slurm-wlm/munge missing and cannot apt-get install as non-root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:  # stale package lists: update once and retry
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=timeout)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SlurmUnavailable(
            f"apt-get install {' '.join(PACKAGES)} failed:\n{out.stderr[-2000:]}"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalSlurm:
    """``with LocalSlurm(root) as cluster:`` a running one-node cluster, partition ``debug``.

    ``cluster.env`` is the environment for clients (``SLURM_CONF`` set).
    """

    def __init__(self, root: Path, cpus: int = 2, memory_mb: int = 2000) -> None:
        self.root = root
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.node = socket.gethostname().split(".")[0]
        # munged runs as the munge user, which cannot enter pytest's 0700 temp dirs
        self.munge_dir = Path(tempfile.mkdtemp(prefix="wmtp-munge-"))
        self.conf = root / "etc" / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.env.pop("SLURM_PARTITION", None)
        self._pid_files: list[Path] = []

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> LocalSlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> None:
        ensure_installed()
        self._start_munge()
        self._write_conf()
        for daemon, pid_file in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            self._pid_files.append(self.root / "run" / pid_file)
            self._run([daemon, "-c", "-f", str(self.conf)], timeout=30)
        self._wait_node_idle(timeout)

    def stop(self) -> None:
        """Let jobs finish (cancel them after a grace period), then stop slurmd,
        slurmctld and munged by their pid files (reverse start order)."""
        slurm_up = self.conf.is_file() and any(p.is_file() for p in self._pid_files[1:])
        if slurm_up and not self._wait_drained(30):
            subprocess.run(
                ["scancel", "--full", "--quiet", "--user", "root"],
                env=self.env,
                capture_output=True,
                timeout=30,
                check=False,
            )
            self._wait_drained(15)
        for pid_file in reversed(self._pid_files):
            _stop_pid_file(pid_file)
        self._pid_files.clear()
        shutil.rmtree(self.munge_dir, ignore_errors=True)

    def _wait_drained(self, timeout: float) -> bool:
        """True once no job is queued and no job step runs (its slurmstepd removes the
        step's socket <spool>/<node>_<job>.<step> when it exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            q = subprocess.run(
                ["squeue", "-h", "-o", "%i"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            steps = list((self.root / "spool").glob(f"{self.node}_*"))
            if q.returncode == 0 and not q.stdout.strip() and not steps:
                return True
            time.sleep(0.5)
        return False

    # -- parts -----------------------------------------------------------------------
    def _start_munge(self) -> None:
        d = self.munge_dir
        key = d / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        shutil.chown(d, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        d.chmod(0o711)  # munged: the socket dir must be searchable by all
        pid_file = d / "munged.pid"
        self._pid_files.append(pid_file)
        cmd = (
            f"/usr/sbin/munged --socket={d / 'munge.socket'} --key-file={key} "
            f"--pid-file={pid_file} --log-file={d / 'munged.log'} --seed-file={d / 'munged.seed'}"
        )
        self._run(["su", "-s", "/bin/sh", "munge", "-c", cmd], timeout=30)
        probe = subprocess.run(
            f"munge -n -S {d / 'munge.socket'} | unmunge -S {d / 'munge.socket'}",
            shell=True,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if "Success" not in probe.stdout:
            raise SlurmUnavailable(f"munge does not work: {probe.stdout}{probe.stderr}")

    def _write_conf(self) -> None:
        for sub in ("etc", "state", "spool", "run", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=wmtp-test",
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    f"SlurmctldPort={free_port()}",
                    f"SlurmdPort={free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.munge_dir / 'munge.socket'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "MailProg=/bin/true",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool'}",
                    f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
                    f"PlugStackConfig={r / 'etc' / 'plugstack.conf'}",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} "
                    f"RealMemory={self.memory_mb} State=UNKNOWN",
                    f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        (r / "etc" / "cgroup.conf").write_text(
            "CgroupPlugin=cgroup/v1\nConstrainCores=no\nConstrainRAMSpace=no\n"
        )
        (r / "etc" / "plugstack.conf").write_text("")

    def _wait_node_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            state = out.stdout.strip() or out.stderr.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise SlurmUnavailable(
            f"node not idle after {timeout:.0f}s (sinfo: {state!r}); logs in {self.root / 'log'}"
        )

    def _run(self, cmd: list[str], timeout: float) -> None:
        """Run a command that daemonizes; its output goes to a file (a daemon may keep
        inherited pipes open)."""
        log = self.root / f"start-{Path(cmd[0]).name}.log"
        with log.open("ab") as f:
            code = subprocess.run(
                cmd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if code.returncode != 0:
            raise SlurmUnavailable(
                f"{' '.join(cmd)} failed ({code.returncode}): {log.read_text(errors='replace')}"
            )

    def logs(self) -> str:
        """The daemons' logs (for assertion messages)."""
        parts = []
        for f in sorted((self.root / "log").glob("*.log")):
            parts.append(f"== {f.name}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


def _stop_pid_file(pid_file: Path, timeout: float = 15) -> None:
    """SIGTERM the process named in ``pid_file``, SIGKILL it if it lingers."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has exited


def _sbin_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
