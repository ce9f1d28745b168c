#!/usr/bin/env python3
"""Start and stop a real, throw-away Slurm cluster on this one machine (root, no systemd).

::

    python tools/slurm_cluster.py install            # Debian packages, if missing
    python tools/slurm_cluster.py start              # one node (this host), idle in ~1 s
    python tools/slurm_cluster.py start --nodes 2    # two emulated nodes, dfm-n1 and dfm-n2
    python tools/slurm_cluster.py status
    python tools/slurm_cluster.py stop               # cancel jobs, stop exactly our daemons

For checks (``nox -s slurm``), not for real work: no accounting database, every daemon
runs as root, all state lives under ``--state-dir`` (default ``/tmp/dfm-slurm``). The
daemons (``munged``, ``slurmctld``, one ``slurmd`` per node) run in the foreground of
their own sessions; their PIDs are written to ``STATE_DIR/daemons.json`` and ``stop``
signals exactly those PIDs, never processes found by name. ``start`` and ``stop`` are
idempotent: starting a running cluster of the same shape does nothing, starting one of
another shape restarts it, stopping a stopped cluster does nothing.

Emulated nodes are several ``slurmd -N NAME`` on this host, each on its own port, with
the names resolving to 127.0.0.1 through a marked ``/etc/hosts`` line (removed on
``stop``), so that ``MASTER_ADDR=dfm-n1`` rendezvous works.

Settings that matter (see the comments in ``slurm_conf``): no cgroups (``linuxproc``,
``task/none``), a short credential lifetime and scheduler interval, so that a requeued
job starts again in ~15 s instead of ~2 min; ``JobRequeue=1`` and ``MinJobAge`` long
enough for ``scontrol show job`` to report finished jobs (there is no ``sacct``).

Standard library only, so it runs with the system ``python3`` as well as the project's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
CONF = Path("/etc/slurm/slurm.conf")
CONF_MARK = "# written by dfm tools/slurm_cluster.py"
HOSTS = Path("/etc/hosts")
HOSTS_MARK = "# dfm-slurm emulated nodes"
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_DIRS = ("/etc/munge", "/var/lib/munge", "/var/log/munge", "/run/munge")
EMULATED_PREFIX = "dfm-n"
FIRST_SLURMD_PORT = 17001  # away from slurmctld 6817, slurmd 6818 and slurmdbd 6819
PARTITION = "debug"


class ClusterError(RuntimeError):
    """The cluster cannot be installed, started or stopped as asked."""


def log(message: str) -> None:
    print(f"slurm_cluster: {message}", file=sys.stderr, flush=True)


# -- install -------------------------------------------------------------------


def missing_programs() -> list[str]:
    return [p for p in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol") if not _which(p)]


def _which(program: str) -> str | None:
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def install() -> None:
    """``apt-get install`` Debian's Slurm packages when a program is missing (needs root)."""
    if not missing_programs():
        return
    _need_root("install Debian's slurm packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {' '.join(PACKAGES)} (apt-get)")
    start = time.monotonic()
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        check=True,
        env=env,
    )
    log(f"installed in {time.monotonic() - start:.0f} s")
    if missing_programs():
        raise ClusterError(f"still missing after install: {', '.join(missing_programs())}")


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ClusterError(f"need root to {what} (run as root, or with sudo)")


# -- configuration ---------------------------------------------------------------


def node_names(nodes: int) -> list[str]:
    """This host's name for one node; ``dfm-n1 .. dfm-nN`` for emulated nodes."""
    if nodes == 1:
        return [socket.gethostname()]
    return [f"{EMULATED_PREFIX}{i}" for i in range(1, nodes + 1)]


def real_memory_mb() -> int:
    """``RealMemory`` as slurmd measures it (``slurmd -C``), so the node is not drained."""
    out = subprocess.run(
        [_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, check=True
    ).stdout
    for field in out.split():
        if field.startswith("RealMemory="):
            return int(field.split("=", 1)[1])
    raise ClusterError(f"`slurmd -C` printed no RealMemory: {out!r}")


def slurm_conf(state_dir: Path, nodes: int) -> str:
    """The cluster's ``slurm.conf``."""
    host = socket.gethostname()
    cpus = os.cpu_count() or 1
    # Emulated nodes share this machine's memory; each claims a share, so the
    # controller never sees a node with less memory than configured.
    memory = real_memory_mb() // nodes
    lines = [
        CONF_MARK,
        f"# state: {state_dir}; nodes: {nodes}",
        "ClusterName=dfm",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root",
        "AuthType=auth/munge",
        # No cgroups in this container: track job processes by parent PID, no task binding.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        # A requeued job may only start after its old credential expired (default 120 s)
        # and a scheduler pass: 20 s + 5 s passes bring a requeue to ~25 s (shorter
        # credentials made step launches fail on a loaded machine).
        "AuthInfo=cred_expire=20",
        "SchedulerParameters=bf_interval=5,sched_interval=5",
        "ReturnToService=2",
        "JobRequeue=1",
        # No accounting database: finished jobs stay visible to `scontrol show job`
        # for MinJobAge seconds, which is what watchdogs poll.
        "MinJobAge=600",
        "KillWait=5",
        "MailProg=/bin/true",
        "SlurmctldPort=6817",
        f"StateSaveLocation={state_dir}/ctld",
        f"SlurmctldPidFile={state_dir}/slurmctld.pid",
        f"SlurmctldLogFile={state_dir}/slurmctld.log",
        f"SlurmdSpoolDir={state_dir}/spool-%n",
        f"SlurmdPidFile={state_dir}/slurmd-%n.pid",
        f"SlurmdLogFile={state_dir}/slurmd-%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
    ]
    names = node_names(nodes)
    if nodes == 1:
        lines.append("SlurmdPort=6818")
        lines.append(
            f"NodeName={names[0]} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN"
        )
    else:
        # Several slurmd on one host: each reads its own NodeName line (-N), which
        # overrides the hardware it detects (config_overrides) and names its port.
        lines.append("SlurmdParameters=config_overrides")
        for index, name in enumerate(names):
            lines.append(
                f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 "
                f"Port={FIRST_SLURMD_PORT + index} CPUs={cpus} RealMemory={memory} State=UNKNOWN"
            )
    lines.append(
        f"PartitionName={PARTITION} Nodes={','.join(names)} Default=YES MaxTime=INFINITE State=UP"
    )
    return "\n".join(lines) + "\n"


def _write_conf(text: str) -> None:
    if CONF.is_file() and CONF_MARK not in CONF.read_text():
        raise ClusterError(
            f"{CONF} exists and was not written by this script; move it away to use this cluster"
        )
    CONF.parent.mkdir(parents=True, exist_ok=True)
    tmp = CONF.with_name(".slurm.conf.tmp")
    tmp.write_text(text)
    os.replace(tmp, CONF)


def _set_hosts(names: list[str] | None) -> None:
    """Add (or with None remove) the marked /etc/hosts line for emulated node names."""
    lines = [line for line in HOSTS.read_text().splitlines() if HOSTS_MARK not in line]
    if names:
        lines.append(f"127.0.0.1 {' '.join(names)} {HOSTS_MARK}")
    text = "\n".join(lines) + "\n"
    if text != HOSTS.read_text():
        # /etc/hosts is often a bind mount in containers: rewrite in place, no rename.
        with open(HOSTS, "w") as f:
            f.write(text)


def _prepare_munge() -> None:
    import grp
    import pwd

    uid, gid = pwd.getpwnam("munge").pw_uid, grp.getgrnam("munge").gr_gid
    for folder in MUNGE_DIRS:
        Path(folder).mkdir(parents=True, exist_ok=True)
        os.chown(folder, uid, gid)
    if not MUNGE_KEY.is_file():
        MUNGE_KEY.write_bytes(os.urandom(1024))
    os.chown(MUNGE_KEY, uid, gid)
    os.chmod(MUNGE_KEY, 0o400)
    for path in Path("/var/log/munge").glob("*"):  # munged refuses a root-owned log
        os.chown(path, uid, gid)


# -- daemons -------------------------------------------------------------------


class State:
    """What ``start`` recorded: the daemons' PIDs and the cluster's shape."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "daemons.json"

    def load(self) -> dict:
        if not self.path.is_file():
            return {}
        return json.loads(self.path.read_text())

    def save(self, data: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _ours(data: dict, name: str) -> bool:
    """Whether the daemon ``name`` recorded in ``data`` still runs (same PID *and* start
    time, so a recycled PID of some other process is never taken for it)."""
    pid = data.get("pids", {}).get(name)
    if pid is None or not _alive(pid):
        return False
    started = data.get("started", {}).get(name)
    return started is None or _start_time(pid) == started


def _spawn(argv: list[str], log_path: Path, *, user: str | None = None) -> int:
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this script; not hit by its Ctrl-C
            user=user,
            group=user,
        )
    return process.pid


def _wait(what: str, check, timeout: float, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = ""
    if log_path is not None and log_path.is_file():
        tail = "\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
    raise ClusterError(f"{what} not ready after {timeout:.0f} s{tail}")


def _quiet(argv: list[str], timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _munge_ok() -> bool:
    try:
        encoded = _quiet(["munge", "-n"])
        return encoded.returncode == 0 and (
            subprocess.run(
                ["unmunge"], input=encoded.stdout, capture_output=True, text=True, timeout=10
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _ctld_up() -> bool:
    try:
        return "UP" in _quiet(["scontrol", "ping"]).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


def node_states() -> dict[str, str]:
    """Node name -> state (``idle``, ``alloc``, ``down*``...) as ``sinfo`` reports it."""
    try:
        out = _quiet(["sinfo", "-h", "-N", "-o", "%N %t"]).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)


def running(state_dir: Path) -> dict | None:
    """The recorded cluster if all its daemons are alive, else None."""
    data = State(state_dir).load()
    pids = data.get("pids", {})
    if pids and all(_ours(data, name) for name in pids):
        return data
    return None


def start(state_dir: Path, nodes: int, *, timeout: float = 60) -> dict:
    """Start munged, slurmctld and ``nodes`` slurmd; return once every node is idle."""
    if nodes < 1:
        raise ClusterError(f"--nodes must be >= 1, got {nodes}")
    _need_root("start slurm daemons")
    install()
    current = running(state_dir)
    if current is not None and current.get("nodes") == nodes:
        log(f"already running ({nodes} node(s), pids {current['pids']})")
        return current
    stop(state_dir)  # stale or other-shaped cluster: clean slate
    started = time.monotonic()
    state_dir.mkdir(parents=True, exist_ok=True)
    names = node_names(nodes)
    _set_hosts(names if nodes > 1 else None)
    _write_conf(slurm_conf(state_dir, nodes))
    _prepare_munge()
    pids: dict[str, int] = {}
    state = State(state_dir)

    def record() -> None:
        started = {name: _start_time(pid) for name, pid in pids.items()}
        state.save(
            {
                "nodes": nodes,
                "node_names": names,
                "pids": pids,
                "started": started,
                "state_dir": str(state_dir),
            }
        )

    try:
        if _munge_ok():
            log("a munged is already serving this machine; using it (not ours to stop)")
        else:
            munge_log = Path("/var/log/munge/munged-dfm.log")
            pids["munged"] = _spawn(
                [_which("munged") or "munged", "--foreground", "--force"], munge_log, user="munge"
            )
            record()
            _wait("munged", _munge_ok, timeout, munge_log)
        ctld_log = state_dir / "slurmctld.out"
        pids["slurmctld"] = _spawn([_which("slurmctld") or "slurmctld", "-D", "-c", "-i"], ctld_log)
        record()
        _wait("slurmctld", _ctld_up, timeout, state_dir / "slurmctld.log")
        for name in names:
            argv = [_which("slurmd") or "slurmd", "-D"]
            if nodes > 1:
                argv += ["-N", name]
            pids[f"slurmd:{name}"] = _spawn(argv, state_dir / f"slurmd-{name}.out")
            record()

        def idle() -> bool:
            states = node_states()
            return all(states.get(name, "").rstrip("*~#") == "idle" for name in names)

        _wait(f"node(s) {','.join(names)} idle", idle, timeout, state_dir / "slurmctld.log")
    except BaseException:
        stop(state_dir)
        raise
    log(f"up: {nodes} node(s) {','.join(names)} in {time.monotonic() - started:.1f} s")
    return state.load()


def _job_ids() -> list[str]:
    try:
        out = _quiet(["squeue", "-h", "-o", "%i"]).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.split()


def _terminate(pid: int, name: str, timeout: float = 15) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        log(f"{name} (pid {pid}) ignored SIGTERM for {timeout:.0f} s; SIGKILL")
        os.kill(pid, signal.SIGKILL)
    try:  # reap it if it is our child (it is not when another invocation started it)
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(state_dir: Path, *, timeout: float = 30) -> None:
    """Cancel every job, then stop exactly the daemons ``start`` recorded."""
    state = State(state_dir)
    data = state.load()
    pids: dict[str, int] = data.get("pids", {})
    if not pids:
        if data:
            state.clear()
        return
    started = time.monotonic()
    # Job processes outlive slurmd: cancel jobs while the daemons can still kill them.
    if _ours(data, "slurmctld"):
        jobs = _job_ids()
        if jobs:
            log(f"cancelling jobs {' '.join(jobs)}")
            _quiet(["scancel", *jobs])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _job_ids():
                time.sleep(0.5)
    order = sorted(pids, key=lambda k: (not k.startswith("slurmd"), k == "munged"))
    for name in order:  # slurmd first, then slurmctld, munged last
        if _ours(data, name):
            _terminate(pids[name], name)
        else:
            log(f"{name} (pid {pids[name]}) is gone already")
    _set_hosts(None)
    state.clear()
    log(f"stopped {', '.join(order)} in {time.monotonic() - started:.1f} s")


def status(state_dir: Path) -> int:
    data = State(state_dir).load()
    if not data:
        print("stopped")
        return 1
    alive = {name: _ours(data, name) for name in data.get("pids", {})}
    print(f"nodes: {data.get('nodes')} ({','.join(data.get('node_names', []))})")
    for name, pid in data.get("pids", {}).items():
        print(f"  {name:<16} pid {pid:<8} {'alive' if alive[name] else 'DEAD'}")
    print(f"  node states: {node_states()}")
    return 0 if all(alive.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("install", "start", "stop", "status", "conf"))
    parser.add_argument("--nodes", type=int, default=1, help="1 (this host) or N emulated nodes")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("DFM_SLURM_DIR", "/tmp/dfm-slurm")),
        help="daemon state, logs and recorded PIDs (default /tmp/dfm-slurm or $DFM_SLURM_DIR)",
    )
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    try:
        if args.action == "install":
            install()
        elif args.action == "start":
            start(state_dir, args.nodes)
        elif args.action == "stop":
            stop(state_dir)
        elif args.action == "conf":
            print(slurm_conf(state_dir, args.nodes), end="")
        else:
            return status(state_dir)
    except (ClusterError, subprocess.CalledProcessError) as error:
        log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
