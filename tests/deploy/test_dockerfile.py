"""docker/Dockerfile, checked without a container engine (none runs here).

A small parser reads the instructions; the checks are about what would break a build or
the container: files copied that are missing or left out of the build context, an
entrypoint path that is not where the script was copied, the runtime stage carrying the
compiler, the fuse.conf edit not taking.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.needs import need

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages (instruction keyword, arguments)."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue  # comments (also inside a continued instruction), blank lines
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                          lambda m: global_args[m.group(1) or m.group(2)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


def copies(stage: Stage) -> list[tuple[list[str], list[str], str]]:
    """Each COPY of a stage: its flags, sources and destination."""
    out = []
    for args in stage.all("COPY"):
        words = shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        *sources, dest = [w for w in words if not w.startswith("--")]
        out.append((flags, sources, dest))
    return out


def apt_installs(stage: Stage) -> set[str]:
    packages: set[str] = set()
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run):
            words = command.split()
            if words[:2] == ["apt-get", "install"]:
                packages |= {w for w in words[2:] if not w.startswith("-")}
    return packages


def exec_form(keyword: str, stage: Stage) -> list[str]:
    (args,) = stage.all(keyword)
    value = json.loads(args)  # shell form is not JSON: signals would go to a /bin/sh -c
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_every_stage_is_a_slim_python_the_project_supports() -> None:
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = re.fullmatch(r">=(\d+)\.(\d+)", requires)
    assert floor, requires
    minimum = (int(floor.group(1)), int(floor.group(2)))
    found = stages()
    assert len(found) == 2, "a builder and a runtime stage"
    for stage in found:
        m = re.fullmatch(r"python:(\d+)\.(\d+)-slim-bookworm", stage.base)
        assert m, f"not a slim Python base: {stage.base}"
        assert (int(m.group(1)), int(m.group(2))) >= minimum
    assert found[0].base == found[1].base, "one Python: the virtualenv moves between them"


def test_the_compiler_stays_in_the_builder() -> None:
    build, runtime = stages()
    assert {"gcc", "libfuse3-dev", "pkg-config"} <= apt_installs(build)  # pyfuse3 has no wheels
    assert {"fuse3", "tini"} <= apt_installs(runtime)
    assert not apt_installs(runtime) & {"gcc", "libfuse3-dev", "pkg-config", "build-essential"}
    for stage in (build, runtime):  # the package lists are not left in a layer
        for run in stage.all("RUN"):
            if "apt-get install" in run:
                assert "rm -rf /var/lib/apt/lists" in run


def test_the_project_is_installed_without_test_extras_into_the_copied_venv() -> None:
    build, runtime = stages()
    (install,) = [r for r in build.all("RUN") if "pip install" in r]
    m = re.search(r"(\S+)/bin/pip install (.*)$", install)
    assert m, install
    venv, what = m.group(1), m.group(2).split()
    assert "." in what and not any(w.startswith(".[") for w in what)
    assert f"python -m venv {venv}" in install
    assert (["--from=build"], [venv], venv) in copies(runtime)
    path = next(e for e in runtime.all("ENV") if e.startswith("PATH="))
    assert path.startswith(f"PATH={venv}/bin:"), "alluxiofuse must be on PATH for the hooks"


def dockerignore_includes(rel: str) -> bool:
    """Whether .dockerignore lets ``rel`` into the build context (Docker's rules: the last
    matching pattern wins; a pattern matching a directory matches what is inside it)."""
    included = True
    parts = rel.split("/")
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = {pattern, pattern.removeprefix("**/")}
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if any(fnmatch.fnmatchcase(prefix, p) for p in candidates):
                included = negate
                break
    return included


def tracked_files(under: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", under], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return out.split()


def test_copied_files_exist_and_are_in_the_build_context() -> None:
    build, runtime = stages()
    sources = [s for stage in (build, runtime) for flags, srcs, _ in copies(stage)
               if not any(f.startswith("--from") for f in flags) for s in srcs]
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        for rel in tracked_files(source):
            assert dockerignore_includes(rel), f"{rel} is left out by .dockerignore"
    # setuptools reads the README named in pyproject.toml when it builds the package.
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources
    # And the context holds nothing else worth sending: no tests, no git, no venv.
    for rel in ("tests/conftest.py", ".git/HEAD", ".venv/bin/python", "docker/k8s/x.yaml",
                "alluxiofuse/__pycache__/cli.cpython-311.pyc"):
        assert not dockerignore_includes(rel), rel


def test_the_entrypoint_is_tini_then_the_copied_script() -> None:
    _, runtime = stages()
    entrypoint = exec_form("ENTRYPOINT", runtime)
    assert entrypoint[:2] == ["/usr/bin/tini", "--"]  # where Debian's tini package puts it
    assert len(entrypoint) == 3
    script = entrypoint[2]
    (flags,) = [f for f, srcs, dest in copies(runtime) if srcs == ["docker/entrypoint.sh"]
                and dest == script]
    assert "--chmod=0755" in flags
    assert exec_form("CMD", runtime) == []
    # The Kubernetes example's preStop runs the same path.
    assert f'["{script}", "stop"]' in (REPO / "docker" / "k8s" / "training-pod.yaml").read_text()


def test_the_default_config_is_where_the_entrypoint_is_told_to_look() -> None:
    _, runtime = stages()
    (dest,) = [d for _, srcs, d in copies(runtime) if srcs == ["docker/alluxiofuse.toml"]]
    env = " ".join(runtime.all("ENV"))
    assert f"ALLUXIOFUSE_CONFIG={dest}" in env.split()
    config = tomllib.loads((REPO / "docker" / "alluxiofuse.toml").read_text())
    port = config["metrics_addr"].rpartition(":")[2]
    assert runtime.all("EXPOSE") == [port]


def fuse_conf_edit() -> str:
    _, runtime = stages()
    (run,) = [r for r in runtime.all("RUN") if "/etc/fuse.conf" in r]
    return run


def debian_fuse_conf() -> str:
    """/etc/fuse.conf as Debian's fuse3 package ships it (user_allow_other commented)."""
    path = Path("/etc/fuse.conf")
    need(path.exists(), "no /etc/fuse.conf (fuse3 is not installed)")
    return re.sub(r"(?m)^user_allow_other$", "#user_allow_other", path.read_text())


def run_on_copy(command: str, conf: Path) -> subprocess.CompletedProcess[str]:
    command = command.replace("/etc/fuse.conf", str(conf))
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30,
                          check=False)


def test_the_fuse_conf_edit_enables_user_allow_other(tmp_path: Path) -> None:
    conf = tmp_path / "fuse.conf"
    conf.write_text(debian_fuse_conf())
    assert run_on_copy(fuse_conf_edit(), conf).returncode == 0
    lines = conf.read_text().splitlines()
    assert "user_allow_other" in lines
    assert "#user_allow_other" not in lines


def test_the_fuse_conf_edit_fails_the_build_when_it_does_not_take(tmp_path: Path) -> None:
    conf = tmp_path / "fuse.conf"
    conf.write_text(debian_fuse_conf().replace("#user_allow_other", "#user_allow_others"))
    assert run_on_copy(fuse_conf_edit(), conf).returncode != 0
