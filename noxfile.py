"""Nox sessions for the DFM workspace.

Plain ``nox`` runs ``lint``, ``tests`` (one environment per workspace member, holding
only that member and its ``test`` group, installed from ``uv.lock``) and ``wheels``
(each member's tests against its built wheel, installed non-editable).

The members are read from ``[tool.uv.workspace] members`` in the root ``pyproject.toml``,
so a new package joins the matrix by existing. Session ids are the distribution names:
``nox -s "tests(dfm-core)"``, ``nox -s "wheels(dfm-apps)"``. Arguments after ``--`` go to
pytest: ``nox -s "tests(dfm-core)" -- -k sampling -x``.

Two more run by default, and skip (saying why) where they cannot: ``browser`` (report.html
in headless Chromium) and ``slurm`` (``dfm submit`` against a real Slurm started here: a
pre-empted and requeued job ends with an uninterrupted run's weights; 2-node gloo jobs).
Both need root and Debian's archive unless their programs are installed; CI is root with
Debian's archive, so it runs them.

Other sessions: ``slow``, ``bench``, ``gpu`` (pytest markers, all members in one
environment), ``typecheck`` (mypy), ``demo`` (``dfm demo``).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import nox
from nox.command import CommandFailed
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # nox depends on tomli below 3.11
    import tomli as tomllib

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "yes"  # `uv sync` makes a reused environment exact again
nox.options.sessions = ["lint", "tests", "wheels", "browser", "slurm"]

ROOT = Path(__file__).parent.resolve()
PYPROJECT = ROOT / "pyproject.toml"

# Members checked by mypy; widen as packages gain annotations.
TYPED = ("dfm-core",)

NO_TESTS_RAN = 5  # pytest.ExitCode.NO_TESTS_COLLECTED: none collected, or all deselected


@dataclass(frozen=True)
class Member:
    """One uv workspace member, as declared by its own pyproject.toml."""

    dist: str  # distribution name, e.g. "dfm-core"
    path: Path  # directory, relative to ROOT
    module: str  # import name, e.g. "dfm_core"
    requires: frozenset[str]  # canonical names of its runtime dependencies
    test_requires: tuple[str, ...]  # requirement strings of its `test` dependency group

    @property
    def test_members(self) -> frozenset[str]:
        """Canonical names of the requirements of its `test` group (some are members)."""
        return frozenset(canonicalize_name(Requirement(r).name) for r in self.test_requires)

    @property
    def tests(self) -> Path:
        return ROOT / self.path / "tests"


def _group(groups: dict[str, list[str | dict[str, str]]], name: str) -> Iterator[str]:
    """Requirement strings of a PEP 735 dependency group, `include-group`s expanded."""
    for item in groups.get(name, []):
        if isinstance(item, str):
            yield item
        else:
            yield from _group(groups, item["include-group"])


def _discover_members() -> list[Member]:
    """Workspace members, in the order of the root's `members` globs (sorted within one)."""
    workspace = tomllib.loads(PYPROJECT.read_text())["tool"]["uv"]["workspace"]
    excluded = {path for pattern in workspace.get("exclude", []) for path in ROOT.glob(pattern)}
    members = []
    for pattern in workspace["members"]:
        for path in sorted(ROOT.glob(pattern)):
            if path in excluded or not (path / "pyproject.toml").is_file():
                continue
            meta = tomllib.loads((path / "pyproject.toml").read_text())
            dist = meta["project"]["name"]
            backend = meta.get("tool", {}).get("uv", {}).get("build-backend", {})
            members.append(
                Member(
                    dist=dist,
                    path=path.relative_to(ROOT),
                    # uv_build's default module name, unless the member overrides it.
                    module=backend.get("module-name", canonicalize_name(dist).replace("-", "_")),
                    requires=frozenset(
                        canonicalize_name(Requirement(r).name)
                        for r in meta["project"].get("dependencies", [])
                    ),
                    test_requires=tuple(_group(meta.get("dependency-groups", {}), "test")),
                )
            )
    return members


MEMBERS = _discover_members()
BY_DIST = {canonicalize_name(m.dist): m for m in MEMBERS}
PER_MEMBER = nox.parametrize("member", [nox.param(m, id=m.dist) for m in MEMBERS])


def _workspace_closure(member: Member, *, with_tests: bool = False) -> list[Member]:
    """`member` and every workspace member it depends on, directly or not; with
    `with_tests`, also the members its `test` group needs (test-only oracles) and theirs."""
    seen = {canonicalize_name(member.dist)}
    todo = [member]
    if with_tests:
        for name in (member.test_members & BY_DIST.keys()) - seen:
            seen.add(name)
            todo.append(BY_DIST[name])
    while todo:
        for name in (todo.pop().requires & BY_DIST.keys()) - seen:
            seen.add(name)
            todo.append(BY_DIST[name])
    return [m for m in MEMBERS if canonicalize_name(m.dist) in seen]


def _sync(session: nox.Session, *args: str) -> None:
    """`uv sync` from the lock into this session's environment (skipped by --no-install)."""
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        "--no-default-groups",
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )


def _lock_constraints(session: nox.Session) -> Path:
    """The lock's pins for every package and group, as a pip constraints file."""
    path = Path(session.create_tmp()) / "constraints.txt"
    session.run_install(
        "uv",
        "export",
        "--frozen",
        "--quiet",
        "--no-hashes",
        "--no-header",
        "--no-annotate",
        "--no-emit-workspace",
        "--all-packages",
        "--all-groups",
        "--output-file",
        str(path),
    )
    return path


def _pytest(session: nox.Session, member: Member, *args: str) -> int | None:
    """Run pytest on `member`'s tests with the root config (markers, addopts), posargs last.

    Returns how many tests ran, read from a JUnit report (None if posargs redirected it).
    Exit code 5, "no tests ran", is let through here so that each caller decides.
    """
    report = Path(session.create_tmp()) / f"junit-{member.dist}.xml"
    report.unlink(missing_ok=True)
    session.run(
        "pytest",
        str(member.tests),
        "-c",
        str(PYPROJECT),
        "--rootdir",
        str(ROOT),
        f"--junitxml={report}",
        *args,
        *session.posargs,
        success_codes=[0, NO_TESTS_RAN],
    )
    if not report.is_file():
        return None
    return sum(int(suite.get("tests", 0)) for suite in ElementTree.parse(report).iter("testsuite"))


def _require_tests(session: nox.Session, member: Member, *args: str) -> None:
    """Run `member`'s fast tests; running none is a failure, not a pass."""
    where = member.tests.relative_to(ROOT)
    if not member.tests.is_dir():
        session.error(f"{member.dist} has no tests: {where}/ is missing")
    if _pytest(session, member, *args) == 0:
        session.error(
            f"pytest ran no tests in {where}/ (none collected, or all deselected by -m/-k):"
            " every member needs fast tests that the default run selects"
        )


def _run_marked(session: nox.Session, marker: str) -> int:
    """Run the `-m marker` tests of every member, one pytest per member (members without
    such tests are fine), then fail if any failed. Returns how many tests ran."""
    ran, failed = 0, []
    for member in MEMBERS:
        if not member.tests.is_dir():
            continue
        try:
            ran += _pytest(session, member, "-m", marker) or 0
        except CommandFailed:
            failed.append(member.dist)
    if failed:
        session.error(f"`-m {marker}` tests failed in: {', '.join(failed)}")
    return ran


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check over the repository (ruff pinned by the lock), and
    `uv lock --check`: the lock every other session installs from matches the pyprojects."""
    session.install("ruff", "--constraint", str(_lock_constraints(session)))
    failed = []
    for check in (
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["uv", "lock", "--check"],
    ):
        try:
            session.run(*check)
        except CommandFailed:  # run every check, so one CI run shows all that is wrong
            failed.append(" ".join(check))
    if failed:
        session.error("failed: " + ", ".join(f"`{check}`" for check in failed))


@nox.session
@PER_MEMBER
def tests(session: nox.Session, member: Member) -> None:
    """One member's tests, in an environment holding only it and its test group (locked)."""
    _sync(session, "--package", member.dist, "--group", "test")
    _require_tests(session, member)


# Run from a neutral directory: the module must resolve into the environment's site-packages.
_CHECK_INSTALLED = (
    "import importlib, pathlib, sys, sysconfig; "
    "where = pathlib.Path(importlib.import_module(sys.argv[1]).__file__).resolve(); "
    'site = pathlib.Path(sysconfig.get_path("purelib")).resolve(); '
    'print(sys.argv[1], "imported from", where); '
    'sys.exit(0 if site in where.parents else f"that is not the installed wheel under {site}")'
)


@nox.session(reuse_venv=False)
@PER_MEMBER
def wheels(session: nox.Session, member: Member) -> None:
    """One member's tests against its built wheel (from the sdist), installed non-editable
    with its workspace dependencies' wheels and the lock's pins as constraints."""
    tmp = Path(session.create_tmp())
    dist_dir = tmp / "dist"
    shutil.rmtree(dist_dir, ignore_errors=True)
    closure = _workspace_closure(member, with_tests=True)
    wheels = []
    for dep in closure:
        session.run_install("uv", "build", "--quiet", "--package", dep.dist, "-o", str(dist_dir))
        stem = canonicalize_name(dep.dist).replace("-", "_")  # a wheel file name's dist part
        wheels.extend(str(wheel) for wheel in dist_dir.glob(f"{stem}-*.whl"))
    session.install(
        *wheels,
        *member.test_requires,
        "--constraint",
        str(_lock_constraints(session)),
        *(arg for m in closure for arg in ("--reinstall-package", m.dist)),
    )
    # From a directory where no src/ is importable: the tests see the installed package.
    with session.chdir(tmp):
        session.run("python", "-c", _CHECK_INSTALLED, member.module)
        _require_tests(session, member, "-p", "no:cacheprovider")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the src/ of the members in TYPED, with their locked dependencies."""
    members = [BY_DIST[canonicalize_name(d)] for d in TYPED]
    _sync(session, *(arg for m in members for arg in ("--package", m.dist)))
    session.install("mypy", "--constraint", str(_lock_constraints(session)))
    session.run("mypy", *(str(m.path / "src") for m in members))


def _sync_all(session: nox.Session) -> None:
    """Every member plus the root `dev` group (pytest, hypothesis, scipy), from the lock."""
    _sync(session, "--all-packages", "--group", "dev")


@nox.session
def slow(session: nox.Session) -> None:
    """Quality and science checks (`-m slow`) of every member, in one environment."""
    _sync_all(session)
    if not _run_marked(session, "slow"):
        session.error("no member has tests marked `slow`")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: `-m bench` tests, then every `benchmarks/*.py` script of the members and
    of the repository root. Figures and how they were measured go to docs/benchmarks.md."""
    _sync_all(session)
    ran = _run_marked(session, "bench")
    scripts = [
        script
        for folder in [*(ROOT / m.path / "benchmarks" for m in MEMBERS), ROOT / "benchmarks"]
        for script in sorted(folder.glob("*.py"))
        if not script.name.startswith("_")
    ]
    for script in scripts:
        session.run("python", str(script))
    if not ran and not scripts:
        session.error("no `-m bench` tests and no benchmarks/*.py scripts found")


@nox.session
def gpu(session: nox.Session) -> None:
    """Tests that need a CUDA device (`-m gpu`); skipped where torch sees none."""
    _sync_all(session)
    found = session.run(
        "python", "-c", "import torch; print(torch.cuda.is_available())", silent=True
    )
    if isinstance(found, str) and found.strip().endswith("False"):
        session.skip("torch sees no CUDA device")
    if not _run_marked(session, "gpu"):
        session.error("no member has tests marked `gpu`")


@nox.session
def demo(session: nox.Session) -> None:
    """`uv run dfm demo` in an environment holding only dfm-apps and its dependencies."""
    _sync(session, "--package", "dfm-apps")
    session.run("dfm", "demo", *session.posargs)


def _run_apps_marked(session: nox.Session, marker: str) -> None:
    """dfm-apps' `-m marker` tests; running none is a failure."""
    if not _pytest(session, BY_DIST["dfm-apps"], "-m", marker, "-o", "faulthandler_timeout=900"):
        session.error(f"no dfm-apps test is marked `{marker}`")


def _require_system(session: nox.Session, programs: list[str], package: str) -> None:
    """Skip the session where its programs are missing and cannot be installed here."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    if all(shutil.which(name, path=path) for name in programs):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        session.skip(f"{package} is not installed and installing it needs root and apt-get")


@nox.session
def slurm(session: nox.Session) -> None:
    """`dfm submit` against a real Slurm on this machine (root; installs Debian's munge,
    slurmctld, slurmd and slurm-client if missing): a job pre-empted and requeued twice
    ends with the weights of an uninterrupted run; 2-task gloo jobs across two emulated
    nodes. tools/slurm_cluster.py starts the daemons and stops exactly those, also when
    a test fails. A few minutes."""
    _require_system(session, ["slurmctld", "slurmd", "munged", "sbatch"], "slurm")
    _sync_all(session)
    cluster = str(ROOT / "tools" / "slurm_cluster.py")
    try:
        session.run("python", cluster, "install")
    except CommandFailed:
        session.skip("could not install Debian's slurm packages (apt-get failed: no archive?)")
    try:
        _run_apps_marked(session, "slurm")
    finally:
        session.run("python", cluster, "stop")


@nox.session
def browser(session: nox.Session) -> None:
    """report.html in headless Chromium (installs Debian's chromium if missing; root):
    a screenshot, and a failure on any broken image/video reference, request leaving
    the machine or console error (tools/browser_check.py). Under a minute."""
    _require_system(session, ["chromium"], "chromium")
    _sync_all(session)
    if not any(shutil.which(name) for name in ("chromium", "chromium-browser")):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            session.run("apt-get", "update", "-qq", external=True, env=env)
            session.run(
                "apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium",
                external=True, env=env,
            )  # fmt: skip
        except CommandFailed:
            session.skip("could not install Debian's chromium (apt-get failed: no archive?)")
    _run_apps_marked(session, "browser")
