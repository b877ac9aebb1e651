"""The ``attune-containers`` command: a thin shell over the services.

Exit codes: 0 success, 1 the operation failed (a build, a removal), 2 invalid input (a pack, a
spec, an argument), 3 the Docker engine is unreachable.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import __version__
from .core.execution import ExecutionStatus, ResourceLimits
from .core.packs import MAX_PACK_FILE_BYTES, PackDefinition, load_pack, pack_from_api
from .core.prune_policy import PrunePolicy, parse_duration
from .errors import AttuneContainersError, ConfigurationError, InvalidSpecError
from .services.base_images import BOOTSTRAP_SUITES, bootstrap
from .services.manager import ContainerDependencyManager
from .services.pruner import PruneReport, Pruner
from .services.runner import ActionRunner
from .settings import Settings

# Soft wrap: long image references and hashes stay on one line, so output can be copied and grepped.
# Not a terminal: wide tables rather than columns cut to 80 characters.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


def _pack(location: str) -> PackDefinition:
    if location == "-":
        from .core.safe_yaml import BoundedYAMLError, load_json

        text = sys.stdin.read(MAX_PACK_FILE_BYTES + 1)  # bounded like a pack file: size and nesting
        if len(text) > MAX_PACK_FILE_BYTES:
            raise InvalidSpecError(f"standard input is larger than {MAX_PACK_FILE_BYTES} bytes", field="pack")
        try:
            return pack_from_api(load_json(text), source="stdin")
        except BoundedYAMLError as exc:
            raise InvalidSpecError(f"standard input is not a pack document: {exc}", field="pack") from None
    return load_pack(location)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


# -- commands ------------------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    pack = _pack(args.pack)
    plan = manager.plan(pack.pack_ref, pack.spec, pull_base=False)
    if args.requirements:
        sys.stdout.write("".join(line + "\n" for line in plan.spec.requirement_lines()))
    else:
        sys.stdout.write(plan.dockerfile())
    return 0


def cmd_validate(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    pack = _pack(args.pack)
    manager.settings.run_limits(pack=pack.limits)  # a pack asking more than the operator's caps is invalid here too
    plan = manager.plan(pack.pack_ref, pack.spec, pull_base=False)
    report: dict[str, Any] = {
        "pack_ref": pack.pack_ref,
        "valid": True,
        "python": plan.base.python_version or plan.base.minor,
        "base_image": plan.base.reference,
        "requirements": plan.spec.requirement_lines(),
        "image": plan.image if plan.base.python_version else None,
    }
    if args.image:
        report["image_valid"] = manager.validate_environment(pack.pack_ref)
    if args.json:
        _print_json(report)
    else:
        out.print(f"[green]valid[/green] {pack.pack_ref}: Python {report['python']} from {plan.base.reference}")
        for line in report["requirements"]:
            out.print(f"  {line}", highlight=False, markup=False)
        if args.image:
            out.print(f"image: {'valid' if report['image_valid'] else '[red]not valid[/red]'}")
    return 0 if report.get("image_valid", True) else 1


def cmd_build(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    if args.all:
        return _build_all(args, manager)
    if args.pack is None:
        raise InvalidSpecError("give a PACK, or --all PACKS_DIR", field="build")
    if args.manifest:
        raise InvalidSpecError("--manifest goes with --all PACKS_DIR --push", field="manifest")
    pack = _pack(args.pack)
    plan = manager.plan(pack.pack_ref, pack.spec)

    def log(line: str) -> None:
        if not line.strip():
            return
        if args.verbose:
            err.print(line, markup=False, highlight=False)
        else:
            status.update(f"building {plan.image}: {line.strip()[:100]}")

    with err.status(f"preparing {plan.image}", spinner="dots") as status:
        # Publishing never adopts an image from the registry: only one built (or found) here.
        ensured = manager.ensure(pack.pack_ref, pack.spec, on_log=log, offline=args.offline or None,
                                 pull=not args.push)
        pushed = manager.push(ensured.info) if args.push else None
    info = ensured.info
    if args.json:
        _print_json({"outcome": ensured.outcome, "pushed": pushed, **info.model_dump(mode="json")})
    else:
        out.print(
            f"{ensured.outcome} {info.image} for {info.pack_ref}: Python {info.runtime_version}, "
            f"{len(info.installed_dependencies)} distributions, {_human_size(info.size_bytes)}"
            + (f"; pushed to {pushed}" if pushed else ""), highlight=False,
        )
    return 0


def _build_all(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .services.prebuild import build_all

    if args.pack is not None:
        raise InvalidSpecError("give either PACK or --all PACKS_DIR", field="build")
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, disable=args.json or not err.is_terminal)
    lines: dict[str, Any] = {}
    finals = {"built", "reused", "pulled", "failed", "invalid"}

    def on_event(pack_ref: str, state: str, detail: str) -> None:
        if pack_ref not in lines:
            lines[pack_ref] = progress.add_task(pack_ref, total=1)
        task = lines[pack_ref]
        if state == "log":
            progress.update(task, description=f"{pack_ref}: {detail.strip()[:70]}")
        elif state in finals:
            progress.update(task, description=f"{pack_ref}: {state}", completed=1)
            progress.advance(overall)
        else:
            progress.update(task, description=f"{pack_ref}: {state}")

    with progress:
        from .core.packs import scan_pack_tree

        overall = progress.add_task("all packs", total=len(scan_pack_tree(args.all)))
        report = build_all(manager, args.all, jobs=args.jobs, push=args.push, offline=args.offline or None,
                           on_event=on_event, manifest=args.manifest)
    if args.json:
        _print_json(report.model_dump(mode="json"))
    else:
        table = Table("pack", "python", "hash", "outcome", "time", "size", "image / error")
        for p in report.packs:
            colour = {"failed": "red", "invalid": "red", "built": "green"}.get(p.outcome, "")
            table.add_row(p.pack_ref, p.python or "", (p.dependency_hash or "")[:12],
                          f"[{colour}]{p.outcome}[/{colour}]" if colour else p.outcome,
                          f"{p.seconds:.1f} s", _human_size(p.size_bytes) if p.size_bytes else "",
                          (p.error or "").splitlines()[0][:80] if p.error else (p.pushed or p.image or ""))
        out.print(table)
    return 0 if report.ok else 1


def cmd_cache(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    if args.cache_command == "prune":
        limit = 0 if args.all else (manager.settings.cache_max_bytes if args.max_bytes is None else args.max_bytes)
        removed = manager.wheels.prune(limit)
        stats = manager.wheels.stats()
        if args.json:
            _print_json({"removed": removed, **stats.model_dump(mode="json")})
        else:
            out.print(f"removed {len(removed)} files; the cache holds {stats.files} files, {_human_size(stats.bytes)}")
        return 0
    stats = manager.wheels.stats()
    if args.json:
        _print_json(stats.model_dump(mode="json"))
    else:
        out.print(f"{stats.directory}: {stats.files} files, {_human_size(stats.bytes)} "
                  f"of at most {_human_size(stats.max_bytes)}", highlight=False)
    return 0


def cmd_ls(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    images = Pruner(manager).images(args.pack, Path(args.packs_dir) if args.packs_dir else None)
    if args.json:
        _print_json([e.model_dump(mode="json") for e in images])
        return 0
    table = Table("pack_ref", "image", "python", "hash", "size", "created", "last used", "current")
    for e in images:
        table.add_row(e.pack_ref, e.image, e.runtime_version, e.dependency_hash[:12],
                      _human_size(e.size_bytes), e.created_at.isoformat(),
                      e.last_used.isoformat(timespec="seconds") if e.last_used else "never",
                      "yes" if e.current else "")
    out.print(table)
    return 0


def cmd_prune(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    # The whole policy is checked (exit 2) before the engine is asked anything.
    policy = PrunePolicy(
        keep=args.keep,
        older_than=parse_duration(args.older_than) if args.older_than is not None else None,
        orphans=args.orphans,
        packs_dir=Path(args.packs_dir) if args.packs_dir else None,
        pack=args.pack,
        include_current=args.include_current,
        dry_run=args.dry_run,
        leftovers=not args.no_leftovers,
        leftover_grace=parse_duration(args.leftover_grace) if args.leftover_grace is not None else None,
    )
    report = Pruner(manager).prune(policy)
    if args.json:
        _print_json(report.model_dump(mode="json"))
    else:
        _print_prune_report(report)
    return 1 if report.errors else 0


def _print_prune_report(report: PruneReport) -> None:
    verb = "would remove" if report.dry_run else "removed"
    # Every build leaves a build stage behind: young ones would be most of the table. One line.
    young = [i for i in report.kept if i.kind != "image"]
    table = Table("", "kind", "image or container", "pack", "size", "unique", "reason")
    for label, items in ((verb, report.removed), ("skipped", report.skipped),
                         ("kept", [i for i in report.kept if i.kind == "image"])):
        for i in items:
            name = i.id[:19] if i.reference == "<none>" else i.reference
            table.add_row(label, i.kind, name, i.pack_ref or "", _human_size(i.size_bytes),
                          _human_size(i.unique_bytes) if i.unique_bytes is not None else "", i.reason)
    out.print(table)
    if young:
        out.print(f"kept {len(young)} build leftovers younger than the grace period "
                  f"(about {_human_size(sum(i.unique_bytes or 0 for i in young))} of their own; --json lists them)",
                  highlight=False)
    for note in report.notes:
        out.print(f"note: {note}", highlight=False)
    for error in report.errors:
        err.print(f"[red]error:[/red] {error}", highlight=False)
    counts = f"{len(report.removed)} removed, {len(report.skipped)} skipped, {len(report.kept)} kept"
    if report.dry_run:
        out.print(f"dry run, nothing removed: {counts.replace('removed', 'would be removed', 1)}; "
                  f"about {_human_size(report.estimated_bytes)} would be freed", highlight=False)
    else:
        exact = "" if report.reclaimed_exact else " (other images changed meanwhile: approximate)"
        out.print(f"{counts}; reclaimed {_human_size(report.reclaimed_bytes)} "
                  f"({report.reclaimed_bytes} bytes, the engine's figure){exact}", highlight=False)


def cmd_inspect(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    environments = manager.list_environments(args.pack_ref)
    if not environments:
        err.print(f"no image for pack {args.pack_ref!r}")
        return 1
    info = manager.get_environment(args.pack_ref) or environments[0]
    if args.lock:
        # A requirements file pinning every distribution with its hash: a pack can be rebuilt
        # to the same content from it (pip's hash-checking mode).
        sys.stdout.write("".join(line + "\n" for line in manager.lock_lines(info)))
        return 0
    if args.json:
        _print_json(info.model_dump(mode="json"))
    else:
        for key, value in info.model_dump(mode="json").items():
            out.print(f"[bold]{key}[/bold]: {value}", highlight=False)
    return 0


def cmd_rm(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    # Only this configuration's images (image_prefix), each by its own tag; never forced.
    removal = manager.remove_images(args.pack_ref, image=args.image, dry_run=args.dry_run)
    if args.json:
        _print_json({"removed": removal.removed, "refused": removal.refused, "dry_run": args.dry_run})
    else:
        verb = "would remove" if args.dry_run else "removed"
        for ref in removal.removed:
            out.print(f"{verb} {ref}", highlight=False)
        for ref, cause in removal.refused.items():
            err.print(f"[red]not removed[/red] {ref}: {cause}", highlight=False)
        if not removal.removed and not removal.refused:
            out.print(f"no image for pack {args.pack_ref!r} under {manager.settings.image_prefix}/", highlight=False)
    return 1 if removal.refused else 0


def cmd_base_ls(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    images = sorted(manager.bases.available(), key=lambda i: i.minor_key)
    if args.json:
        _print_json([i.model_dump(mode="json") for i in images])
        return 0
    table = Table("python", "image", "exact version", "on this host")
    for i in images:
        table.add_row(i.minor, i.reference, i.python_version or "?", "yes" if i.present else "no (pulled on use)")
    out.print(table)
    return 0


def cmd_base_bootstrap(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    minors = args.python or sorted(BOOTSTRAP_SUITES)
    for minor in minors:
        reference = f"{args.repository}:{minor}"
        if manager.engine.inspect_image(reference) is not None and not args.force:
            out.print(f"{reference} exists")
            continue
        with err.status(f"bootstrapping {reference} from Debian {BOOTSTRAP_SUITES.get(minor, '?')}"):
            bootstrap(minor, repository=args.repository)
        out.print(f"built {reference}")
    return 0


def _json_argument(text: str | None, path: str | None, field: str) -> dict[str, Any]:
    if text is not None and path is not None:
        raise InvalidSpecError(f"give --{field} or --{field}-file, not both", field=field)
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidSpecError(f"cannot read {path}: {exc.strerror}", field=f"{field}-file") from None
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSpecError(f"not JSON: {exc}", field=field) from None
    if not isinstance(value, dict):
        raise InvalidSpecError("must be a JSON object", field=field)
    return value


def cmd_run(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    parameters = _json_argument(args.params, args.params_file, "params")
    secrets = _json_argument(None, args.secrets_file, "secrets")
    environment = {}
    for item in args.env or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise InvalidSpecError(f"{item!r} is not NAME=VALUE", field="--env")
        environment[name] = value
    try:
        limits = ResourceLimits(timeout=args.timeout, memory=args.memory, cpus=args.cpus, network=args.network)
    except ValueError as exc:
        raise InvalidSpecError(str(exc).splitlines()[-1] if str(exc) else "invalid limit", field="limits") from None
    runner = ActionRunner(args.packs_dir, manager)
    with err.status(f"running {args.action_ref}", spinner="dots"):
        # One run per process: a warm container would only outlive it, so the CLI runs cold.
        result = runner.run(args.action_ref, parameters, secrets, limits=limits, environment=environment,
                            execution_id=args.execution_id, warm=False)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        if result.stdout:
            sys.stdout.write(result.stdout)
        if result.stderr:
            sys.stderr.write(result.stderr)
        colour = "green" if result.succeeded else "red"
        err.print(f"[{colour}]{result.status.value}[/{colour}] {result.action_ref} in {result.duration_ms} ms "
                  f"(exit code {result.exit_code})", highlight=False)
        if result.error is not None:
            err.print(f"{result.error.type}: {result.error.message}", markup=False, highlight=False)
            if result.error.traceback:
                err.print(result.error.traceback.rstrip(), markup=False, highlight=False)
        print(json.dumps(result.result, indent=2, ensure_ascii=False))
    if result.status is ExecutionStatus.succeeded:
        return 0
    if result.error is not None and result.error.type == "EngineUnavailable":
        return 3
    return 1


def cmd_serve(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    from .http_api import serve

    if args.socket and args.port:
        raise InvalidSpecError("give --socket or --port, not both", field="serve")

    def announce(where: str) -> None:  # once every check passed and the socket exists
        err.print(f"serving {args.packs_dir} on {where} (OpenAPI at /openapi.json); Ctrl-C or SIGTERM stops it",
                  highlight=False)

    try:
        serve(args.packs_dir, socket=args.socket, host=args.host, port=args.port or 8765, manager=manager,
              allow_remote=args.allow_remote, announce=announce, log_level=args.log_level)
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the signal it shut down on: a requested stop is a clean exit
    return 0


# -- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attune-containers", description="Build and manage one container image per Attune pack."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pack_help = "a pack directory, its pack.yaml, an API JSON file, or - for API JSON on stdin"

    def add(name: str, fn: Callable[..., int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        return p

    p = add("render", cmd_render, "Print the Dockerfile that would be built for a pack")
    p.add_argument("pack", help=pack_help)
    p.add_argument("--requirements", action="store_true", help="print the requirements file instead")

    p = add("validate", cmd_validate, "Check a pack's spec (and with --image, its built image)")
    p.add_argument("pack", help=pack_help)
    p.add_argument("--image", action="store_true", help="also check that the pack's image runs")
    p.add_argument("--json", action="store_true")

    p = add("build", cmd_build, "Build a pack's image (or every pack's) unless it exists (idempotent)")
    p.add_argument("pack", nargs="?", help=pack_help)
    p.add_argument("--all", metavar="PACKS_DIR", help="every pack under this tree, in parallel")
    p.add_argument("--jobs", type=int, default=2, help="builds at once with --all (default 2)")
    p.add_argument("--push", action="store_true", help="push to the registry (ATTUNE__CONTAINERS__REGISTRY)")
    p.add_argument("--manifest", metavar="FILE",
                   help="with --all --push: write the trusted manifest (each pack's pushed image by digest) "
                        "that workers read from ATTUNE__CONTAINERS__TRUSTED_MANIFEST")
    p.add_argument("--offline", action="store_true", help="use the wheel cache only, networking off")
    p.add_argument("-v", "--verbose", action="store_true", help="stream the build log")
    p.add_argument("--json", action="store_true")

    p = add("ls", cmd_ls, "List pack images: size, last use, whether current")
    p.add_argument("--pack", help="only this pack_ref")
    p.add_argument("--packs-dir", help="tell current images by this packs tree (default: the last built or used)")
    p.add_argument("--json", action="store_true")

    p = add("prune", cmd_prune, "Remove old pack images and build leftovers; criteria combine (AND)")
    p.add_argument("--keep", type=int, metavar="N", help="keep the newest N images of each pack (the current one counts)")
    p.add_argument("--older-than", metavar="DURATION", help="only images not used or created within this (7d, 12h, 1d12h)")
    p.add_argument("--orphans", action="store_true", help="only images of packs missing from --packs-dir")
    p.add_argument("--packs-dir", help="the packs tree (PACKS/<pack>/pack.yaml): which packs exist, and their current images")
    p.add_argument("--pack", help="only this pack's images (build leftovers are then left alone)")
    p.add_argument("--include-current", action="store_true", help="current images may go too")
    p.add_argument("--no-leftovers", action="store_true", help="leave build leftovers alone")
    p.add_argument("--leftover-grace", metavar="DURATION",
                   help="leftovers younger than this stay (default: 1h, or the build timeout if longer)")
    p.add_argument("--dry-run", action="store_true", help="report what would go; remove nothing")
    p.add_argument("--json", action="store_true")

    p = add("inspect", cmd_inspect, "Show a pack's current image")
    p.add_argument("pack_ref")
    p.add_argument("--lock", action="store_true", help="print its lock: every distribution pinned with its sha256")
    p.add_argument("--json", action="store_true")

    p = add("rm", cmd_rm, "Remove a pack's images (of this image_prefix only)")
    p.add_argument("pack_ref")
    p.add_argument("--image", metavar="HASH", help="only the image whose dependency hash (tag) or image ID starts with this")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    p.add_argument("--json", action="store_true")

    p = add("run", cmd_run, "Run an action in its pack's image and print its result")
    p.add_argument("action_ref", help="<pack_ref>.<action name>")
    p.add_argument("--packs-dir", required=True, help="the packs tree: PACKS/<pack_ref>/pack.yaml")
    p.add_argument("--params", help="parameters as a JSON object")
    p.add_argument("--params-file", help="parameters from a JSON file")
    p.add_argument("--secrets-file", help="secrets from a JSON file (never on the command line)")
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="an extra environment variable")
    p.add_argument("--timeout", type=float, help="seconds (default: the action's, else 300)")
    p.add_argument("--execution-id", help="the caller's id of this execution (default: a new one); a container label")
    p.add_argument("--memory", help="e.g. 256m (swap is never allowed)")
    p.add_argument("--cpus", type=float)
    p.add_argument("--network", help="none (default), bridge or a named network")
    p.add_argument("--json", action="store_true", help="print the whole ExecutionResult as JSON")

    p = add("serve", cmd_serve, "Serve executions over HTTP (Unix socket or loopback) with warm pools")
    p.add_argument("--packs-dir", required=True)
    p.add_argument("--socket", help="a Unix socket path (recommended)")
    p.add_argument("--host", default="127.0.0.1", help="loopback address with --port")
    p.add_argument("--port", type=int, help="a TCP port on --host (default 8765 without --socket)")
    p.add_argument("--allow-remote", action="store_true",
                   help="let --host be a non-loopback address; needs a token (service_token_file)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                   help="the service's log (JSON lines on stderr, an access log included); default info")

    p = add("cache", lambda a, m: 0, "The shared wheel cache of builds: its size, or prune it")
    cache = p.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    c = cache.add_parser("ls", help="where the cache is and how much it holds")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cache)
    c = cache.add_parser("prune", help="remove least recently used files down to a size")
    c.add_argument("--max-bytes", type=int, help="default: the configured cache_max_bytes")
    c.add_argument("--all", action="store_true", help="empty the cache")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cache)

    p = add("base", lambda a, m: 0, "Base images: list them, or bootstrap local ones")
    base = p.add_subparsers(dest="base_command", required=True, metavar="COMMAND")
    b = base.add_parser("ls", help="Which Python versions are available, from which image")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_base_ls)
    b = base.add_parser("bootstrap", help="Build local base images from Debian suites (debootstrap)")
    b.add_argument("--python", action="append", choices=sorted(BOOTSTRAP_SUITES),
                   help="a Python minor version; repeat for several (default: all)")
    b.add_argument("--repository", default="attune-base/python", help="repository of the images made")
    b.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    b.set_defaults(func=cmd_base_bootstrap)
    return parser


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so every `finally` runs and no container is left behind.
    raise KeyboardInterrupt


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError, or a config file that does not parse
        raise ConfigurationError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        manager = ContainerDependencyManager(_settings())
        return args.func(args, manager)
    except ConfigurationError as exc:
        err.print(f"[red]invalid configuration:[/red] {exc}", highlight=False)
        return exc.exit_code
    except AttuneContainersError as exc:
        # Bad input has its own errors (InvalidSpecError, InvalidPolicyError: exit 2). Any other
        # exception, a ValueError included, is a bug: it is not dressed up as one of these.
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
