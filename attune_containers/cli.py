"""The ``attune-containers`` command: a thin shell over the services.

Exit codes: 0 success, 1 the operation failed (a build, a removal, no image for a pack), 2 invalid
input (a pack, a spec, an argument, the configuration), 3 the Docker engine is unreachable; a
registry: 4 refused the credentials, 5 its certificate is not trusted, 6 does not answer. With
``--json`` an error is also a JSON document on stdout: the service's problem details plus
``exit_code``.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.filesize import decimal as decimal_size
from rich.table import Table
from rich.text import Text

from . import __version__
from . import errors as error_types
from .core import problems
from .core.execution import ExecutionStatus, ResourceLimits
from .core.pack_ref import validate_pack_ref
from .core.packs import MAX_PACK_FILE_BYTES, PackDefinition, load_pack, pack_from_api
from .core.plan import BuildPlan
from .core.prune_policy import PrunePolicy, parse_duration
from .core.spec import DependencySpec, EnvironmentInfo, validate_spec
from .core.versions import BaseImage
from .errors import (
    AttuneContainersError,
    ConfigurationError,
    EngineUnavailableError,
    EnvironmentNotFoundError,
    InvalidSpecError,
)
from .runtimes import RUNTIMES, get_runtime
from .services.base_images import BOOTSTRAP_SUITES, NODE_BOOTSTRAP_REPOSITORY, NODE_BOOTSTRAP_SUITES, bootstrap
from .services.manager import ContainerDependencyManager
from .services.pruner import ImageEntry, Pruner, PruneReport
from .services.runner import ActionRunner
from .settings import Settings, parse_bytes

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
    return "?" if n is None else decimal_size(n)  # kB, MB, GB in powers of 1000, as docker shows sizes


def _pydantic_message(exc: ValueError) -> str:
    """pydantic's own words, every error on one line ("; " between them), without its documentation links."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    return "; ".join(
        f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"] for e in exc.errors(include_url=False)
    )


# -- argument types: argparse turns their errors into "argument --x: ..." and exit 2 ------------


def _size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _memory(text: str) -> str:
    _size(text)  # checked here for one clear message; the limits keep the size as written
    return text.strip()


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port: 1 to 65535")
    return port


# -- output: tables, --format, -q ----------------------------------------------------------------


def _cell(value: Any) -> Text:
    # Never markup: pack refs and error messages come from packs and must print as they are.
    return value if isinstance(value, Text) else Text("" if value is None else str(value))


def _print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table on a terminal; elsewhere tab-separated lines, the header first, so that cut, awk and
    sort read it whole (no box characters, no cut or wrapped cells)."""
    if out.is_terminal:
        table = Table(*headers)
        for row in rows:
            table.add_row(*map(_cell, row))
        out.print(table)
        return
    for row in [headers, *rows]:
        print("\t".join(re.sub(r"[\t\r\n]+", " ", _cell(v).plain) for v in row))


# {{.field}} and {{json .field}} (docker's habit) over the fields of the JSON document only: no
# attribute access, indexing or calls, so a format string cannot reach anything but those values.
_ACTION = re.compile(r"\{\{\s*(json\s+)?\.([A-Za-z_][A-Za-z0-9_]*)?\s*\}\}")
FORMAT_HELP = (
    "format each item with a template: {{.field}} or {{json .field}} for the fields of --json "
    "({{.}}: all), \\t and \\n for tab and newline; or 'json' for one JSON document a line. "
    "Not a Go template: nothing else is evaluated"
)


def _formatter(template: str, model: type[BaseModel]) -> Callable[[dict[str, Any]], str]:
    """Compile ``template`` for documents of ``model``; InvalidSpecError (exit 2) for anything that
    is not a literal, a known field or the whole document."""
    if template == "json":
        return lambda doc: json.dumps(doc, sort_keys=True, default=str)
    fields = set(model.model_fields) | set(model.model_computed_fields)
    parts: list[tuple[str, str | None, bool]] = []  # (literal, field, as json)
    pieces = re.split(r"(\{\{.*?\}\})", template.replace("\\t", "\t").replace("\\n", "\n"), flags=re.S)
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if "{{" in piece or "}}" in piece:
                raise InvalidSpecError(f"unbalanced braces in {template!r}", field="format")
            parts.append((piece, None, False))
            continue
        match = _ACTION.fullmatch(piece)
        if match is None:
            raise InvalidSpecError(
                f"{piece!r} is not {{{{.field}}}} or {{{{json .field}}}}; nothing else is evaluated", field="format"
            )
        name = match.group(2) or ""
        if name and name not in fields:
            raise InvalidSpecError(f"no field {name!r}; the fields are {', '.join(sorted(fields))}", field="format")
        parts.append(("", name, bool(match.group(1))))

    def value(doc: dict[str, Any], name: str, as_json: bool) -> str:
        v = doc[name] if name else doc
        if as_json or isinstance(v, dict | list):
            return json.dumps(v, sort_keys=True, default=str)
        if isinstance(v, bool):
            return "true" if v else "false"
        return "" if v is None else str(v)

    return lambda doc: "".join(lit if name is None else value(doc, name, as_json) for lit, name, as_json in parts)


def _short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]  # docker's -q: 12 hex digits


def _print_items(args: argparse.Namespace, items: Sequence[BaseModel], model: type[BaseModel]) -> bool:
    """-q and --format (for ls and inspect); False when neither was asked for."""
    if getattr(args, "quiet", False):
        for item in items:
            print(_short_id(item.id))  # type: ignore[attr-defined]
        return True
    if getattr(args, "format", None):
        render = _formatter(args.format, model)
        for item in items:
            print(render(item.model_dump(mode="json")))
        return True
    return False


# -- commands ------------------------------------------------------------------------------------


def _specs(pack: PackDefinition, runtime: str | None) -> list[DependencySpec]:
    """The specs a command works on: every runtime's of the pack (Python first), or only
    ``--runtime``'s (one the pack declares nothing for has an empty spec, as its actions get)."""
    return [pack.spec_for(runtime)] if runtime is not None else list(pack.specs.values())


def _one_spec(pack: PackDefinition, runtime: str | None, command: str) -> DependencySpec:
    """The one spec a command that shows a single image works on: a mixed pack needs --runtime."""
    specs = _specs(pack, runtime)
    if len(specs) != 1:
        raise InvalidSpecError(
            f"pack {pack.pack_ref!r} has {' and '.join(pack.specs)} images: `{command}` shows one, give --runtime",
            field="runtime",
        )
    return specs[0]


def _plan_without_pull(manager: ContainerDependencyManager, pack: PackDefinition, spec: DependencySpec) -> BuildPlan:
    """The plan ``render`` and ``validate`` show. Without an engine (CI linting packs) the configured
    base images stand in uninspected: everything is checked, but the exact Python version, and so
    the dependency hash and the image tag, are unknown."""
    try:
        return manager.plan(pack.pack_ref, spec, pull_base=False)
    except EngineUnavailableError:
        settings = manager.settings
        validate_pack_ref(pack.pack_ref)
        runtime = get_runtime(spec.runtime)
        validated = runtime.validate(spec, settings.requirement_policy())
        bases = sorted(
            (BaseImage(minor=m, reference=r) for m, r in runtime.base_images(settings).items()), key=lambda b: b.minor_key
        )
        base = runtime.choose_base(bases, validated)
        err.print(
            f"note: no engine answers: the exact {runtime.display_name} version and the image tag are not known", highlight=False
        )
        return runtime.plan(pack.pack_ref, validated, base, settings.build_options(), settings.image_prefix)


def cmd_render(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    pack = _pack(args.pack)
    plan = _plan_without_pull(manager, pack, _one_spec(pack, args.runtime, "render"))
    if args.json:
        _print_json({"pack_ref": pack.pack_ref, "dockerfile": plan.dockerfile(), "requirements": plan.spec.requirement_lines()})
    elif args.requirements:
        sys.stdout.write("".join(line + "\n" for line in plan.spec.requirement_lines()))
    else:
        sys.stdout.write(plan.dockerfile())
    return 0


def cmd_validate(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    pack = _pack(args.pack)
    manager.settings.run_limits(pack=pack.limits)  # a pack asking more than the operator's caps is invalid here too
    # Every runtime's spec is checked before anything is printed: a mixed pack is valid only whole.
    plans = [_plan_without_pull(manager, pack, spec) for spec in _specs(pack, args.runtime)]
    reports: list[dict[str, Any]] = []
    for plan in plans:
        runtime = get_runtime(plan.spec.runtime)
        report: dict[str, Any] = {
            "pack_ref": pack.pack_ref,
            "valid": True,
            "runtime": runtime.name,
            "python": plan.base.python_version or plan.base.minor,  # the runtime's version (the name predates Node.js)
            "base_image": plan.base.reference,
            "requirements": plan.spec.requirement_lines(),
            "image": plan.image if plan.base.python_version else None,
        }
        if args.image:
            report["image_valid"] = manager.validate_environment(pack.pack_ref, runtime.name)
        reports.append(report)
        if not args.json:
            out.print(
                f"[green]valid[/green] {pack.pack_ref}: {runtime.display_name} {report['python']} from {plan.base.reference}"
            )
            for line in report["requirements"]:
                out.print(f"  {line}", highlight=False, markup=False)
            if args.image:
                out.print(f"image: {'valid' if report['image_valid'] else '[red]not valid[/red]'}")
    if args.json:
        # One runtime: the report as before; a mixed pack: one report per runtime.
        _print_json(reports[0] if len(reports) == 1 else reports)
    return 0 if all(r.get("image_valid", True) for r in reports) else 1


def cmd_build(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    if isinstance(args.all, str):  # the older spelling, --all PACKS_DIR
        if args.packs_dir is not None and args.packs_dir != args.all:
            raise InvalidSpecError("give the packs tree once: --all --packs-dir PACKS_DIR", field="packs-dir")
        args.packs_dir = args.all
    if args.all:
        if args.runtime is not None:
            raise InvalidSpecError("--runtime goes with PACK; --all builds every runtime's image of every pack", field="runtime")
        if args.packs_dir is None:
            raise InvalidSpecError("--all builds every pack of --packs-dir PACKS_DIR: give it", field="packs-dir")
        return _build_all(args, manager)
    if args.pack is None:
        raise InvalidSpecError("give a PACK, or --all --packs-dir PACKS_DIR", field="build")
    if args.packs_dir is not None:
        raise InvalidSpecError("--packs-dir goes with --all (one PACK is built by its own path)", field="packs-dir")
    if args.manifest:
        raise InvalidSpecError("--manifest goes with --all PACKS_DIR --push", field="manifest")
    pack = _pack(args.pack)
    # Every runtime's image of the pack (or --runtime's). Every spec is validated before the engine
    # is asked anything, and all are planned before any builds: one bad runtime builds nothing.
    specs = _specs(pack, args.runtime)
    for spec in specs:
        validate_spec(spec, manager.settings.requirement_policy())
    plans = [(spec, manager.plan(pack.pack_ref, spec)) for spec in specs]
    documents = []
    for spec, plan in plans:
        ensured, pushed = _build_one(args, manager, pack.pack_ref, spec, plan)
        info = ensured.info
        documents.append({"outcome": ensured.outcome, "pushed": pushed, **info.model_dump(mode="json")})
        if not args.json:
            out.print(
                f"{ensured.outcome} {info.image} for {info.pack_ref}: {get_runtime(info.runtime).display_name} "
                f"{info.runtime_version}, "
                f"{len(info.installed_dependencies)} distributions, {_human_size(info.size_bytes)}"
                + (f"; pushed to {pushed}" if pushed else ""),
                highlight=False,
            )
    if args.json:
        # One image: the document as before; a mixed pack: one per runtime, Python first.
        _print_json(documents[0] if len(documents) == 1 else documents)
    return 0


def _build_one(
    args: argparse.Namespace, manager: ContainerDependencyManager, pack_ref: str, spec: DependencySpec, plan: BuildPlan
) -> tuple[Any, str | None]:
    def log(line: str) -> None:
        if not line.strip():
            return
        if args.verbose:
            err.print(line, markup=False, highlight=False)
        else:
            status.update(f"building {plan.image}: {line.strip()[:100]}")

    with err.status(f"preparing {plan.image}", spinner="dots") as status:
        # Publishing never adopts an image from the registry: only one built (or found) here.
        ensured = manager.ensure(pack_ref, spec, on_log=log, offline=args.offline or None, pull=not args.push)
        pushed = manager.push(ensured.info) if args.push else None
    return ensured, pushed


def _build_all(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .services.prebuild import build_all

    if args.pack is not None:
        raise InvalidSpecError("give either PACK or --all --packs-dir PACKS_DIR", field="build")
    # Every pack would fail alike on an engine that does not answer: that is exit 3, not a table.
    manager.engine.ping()
    if args.push:
        manager.check_registry()  # a wrong password is exit 4 now, not after every build
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=args.json or not err.is_terminal,
    )
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
        from .services.prebuild import build_tasks

        overall = progress.add_task("all packs", total=len(build_tasks(scan_pack_tree(args.packs_dir))))
        report = build_all(
            manager,
            args.packs_dir,
            jobs=args.jobs,
            push=args.push,
            offline=args.offline or None,
            on_event=on_event,
            manifest=args.manifest,
        )
    if args.json:
        document = report.model_dump(mode="json")
        if args.push:
            # The workers' trusted manifest of this run, by digest, whether or not --manifest saves it.
            from .services.prebuild import manifest_of

            document["manifest"] = manifest_of(report).model_dump(mode="json")
        _print_json(document)
    else:
        colours = {"failed": "red", "invalid": "red", "built": "green"}
        _print_table(
            ("pack", "python", "hash", "outcome", "time", "size", "image / error", "runtime"),
            [
                (
                    p.pack_ref,
                    p.python,
                    (p.dependency_hash or "")[:12],
                    Text(p.outcome, style=colours.get(p.outcome, "")),
                    f"{p.seconds:.1f} s",
                    _human_size(p.size_bytes) if p.size_bytes else "",
                    _headline(p.error) if p.error else (p.pushed or p.image or ""),
                    p.runtime or "",
                )
                for p in report.packs
            ],
        )
    return report.exit_code()


def _headline(error: str) -> str:
    """An error's first line, with pip's own ERROR line when the build log has one: the cause."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    pip = next((line for line in lines[1:] if line.startswith(("ERROR", "error:"))), None)
    return " ".join(filter(None, (lines[0] if lines else "", pip)))


def cmd_cache(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    # The default runtime's cache (wheels) as before; the other runtimes' caches under "others"
    # (JSON) and one line each.
    others = {r.name: manager.fetcher(r.name) for r in RUNTIMES.values() if r.name != get_runtime().name}
    if args.cache_command == "prune":
        limit = 0 if args.all else (manager.settings.cache_max_bytes if args.max_bytes is None else args.max_bytes)
        removed = manager.wheels.prune(limit)
        stats = manager.wheels.stats()
        pruned = {name: (cache.prune(limit), cache.stats()) for name, cache in others.items()}
        if args.json:
            _print_json(
                {
                    "removed": removed,
                    **stats.model_dump(mode="json"),
                    "others": {name: {"removed": r, **s.model_dump(mode="json")} for name, (r, s) in pruned.items()},
                }
            )
        else:
            out.print(
                f"removed {len(removed)} files; the cache holds {stats.files} files, {_human_size(stats.bytes)}", highlight=False
            )
            for name, (r, s) in pruned.items():
                out.print(
                    f"{name}: removed {len(r)} files; the cache holds {s.files} files, {_human_size(s.bytes)}", highlight=False
                )
        return 0
    stats = manager.wheels.stats()
    other_stats = {name: cache.stats() for name, cache in others.items()}
    if args.json:
        _print_json(
            {**stats.model_dump(mode="json"), "others": {name: s.model_dump(mode="json") for name, s in other_stats.items()}}
        )
    else:
        for s in (stats, *other_stats.values()):
            out.print(
                f"{s.directory}: {s.files} files, {_human_size(s.bytes)} of at most {_human_size(s.max_bytes)}", highlight=False
            )
    return 0


def cmd_ls(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    if args.pack is not None:
        validate_pack_ref(args.pack)
    if args.format:
        _formatter(args.format, ImageEntry)  # a bad template is exit 2 before the engine is asked
    images = Pruner(manager).images(args.pack, Path(args.packs_dir) if args.packs_dir else None)
    if args.json:
        _print_json([e.model_dump(mode="json") for e in images])
        return 0
    if _print_items(args, images, ImageEntry):
        return 0
    # The version column keeps its name (scripts read it); runtime says whose version it is.
    _print_table(
        ("pack_ref", "image", "python", "hash", "size", "created", "last used", "current", "runtime"),
        [
            (
                e.pack_ref,
                e.image,
                e.runtime_version,
                e.dependency_hash[:12],
                _human_size(e.size_bytes),
                e.created_at.isoformat(),
                e.last_used.isoformat(timespec="seconds") if e.last_used else "never",
                "yes" if e.current else "",
                e.runtime,
            )
            for e in images
        ],
    )
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
    _print_table(
        ("", "kind", "image or container", "pack", "size", "unique", "reason"),
        [
            (
                label,
                i.kind,
                i.id[:19] if i.reference == "<none>" else i.reference,
                i.pack_ref,
                _human_size(i.size_bytes),
                _human_size(i.unique_bytes) if i.unique_bytes is not None else "",
                i.reason,
            )
            for label, items in (
                (verb, report.removed),
                ("skipped", report.skipped),
                ("kept", [i for i in report.kept if i.kind == "image"]),
            )
            for i in items
        ],
    )
    if young:
        out.print(
            f"kept {len(young)} build leftovers younger than the grace period "
            f"(about {_human_size(sum(i.unique_bytes or 0 for i in young))} of their own; --json lists them)",
            highlight=False,
        )
    for note in report.notes:
        out.print(f"note: {note}", highlight=False)
    for error in report.errors:
        err.print(f"[red]error:[/red] {error}", highlight=False)
    counts = f"{len(report.removed)} removed, {len(report.skipped)} skipped, {len(report.kept)} kept"
    if report.dry_run:
        out.print(
            f"dry run, nothing removed: {counts.replace('removed', 'would be removed', 1)}; "
            f"about {_human_size(report.estimated_bytes)} would be freed",
            highlight=False,
        )
    else:
        exact = "" if report.reclaimed_exact else " (other images changed meanwhile: approximate)"
        out.print(
            f"{counts}; reclaimed {_human_size(report.reclaimed_bytes)} "
            f"({report.reclaimed_bytes} bytes, the engine's figure){exact}",
            highlight=False,
        )


def cmd_inspect(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    validate_pack_ref(args.pack_ref)  # a malformed ref is exit 2 before the engine is asked
    runtime = get_runtime(args.runtime).name if args.runtime is not None else None
    if args.format:
        _formatter(args.format, EnvironmentInfo)
    environments = manager.list_environments(args.pack_ref, runtime)
    if not environments:
        which = f" for runtime {runtime}" if runtime else ""
        raise EnvironmentNotFoundError(f"no image{which} for pack {args.pack_ref!r} under {manager.settings.image_prefix}/")
    # The current image of each runtime the pack has images of (one, unless it is a mixed pack).
    # Registry order (Python first), as build lists them.
    present = {e.runtime for e in environments}
    runtimes = [runtime] if runtime is not None else [r for r in RUNTIMES if r in present]
    infos = [manager.get_environment(args.pack_ref, r) or environments[0] for r in runtimes]
    infos = infos or [environments[0]]  # images of a runtime this version does not know: the newest
    if _print_items(args, infos, EnvironmentInfo):
        return 0
    if args.lock:
        if len(infos) != 1:
            raise InvalidSpecError(
                f"pack {args.pack_ref!r} has {' and '.join(runtimes)} images, each with its own lock: give --runtime",
                field="runtime",
            )
        # A requirements file pinning every distribution with its hash: a pack can be rebuilt
        # to the same content from it (pip's hash-checking mode).
        sys.stdout.write("".join(line + "\n" for line in manager.lock_lines(infos[0])))
        return 0
    if args.json:
        # One image: the EnvironmentInfo as before; a mixed pack: one per runtime, Python first.
        documents = [info.model_dump(mode="json") for info in infos]
        _print_json(documents[0] if len(documents) == 1 else documents)
    else:
        for n, info in enumerate(infos):
            if n:
                out.print("")
            for key, value in info.model_dump(mode="json").items():
                out.print(f"[bold]{key}[/bold]: {value}", highlight=False)
    return 0


def cmd_rm(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    validate_pack_ref(args.pack_ref)
    # Only this configuration's images (image_prefix), each by its own tag; never forced.
    removal = manager.remove_images(args.pack_ref, image=args.image, dry_run=args.dry_run)
    if not removal.removed and not removal.refused:  # as for inspect: nothing of that pack is exit 1
        which = f" matching {args.image!r}" if args.image else ""
        raise EnvironmentNotFoundError(f"no image for pack {args.pack_ref!r}{which} under {manager.settings.image_prefix}/")
    if args.json:
        _print_json({"removed": removal.removed, "refused": removal.refused, "dry_run": args.dry_run})
    else:
        verb = "would remove" if args.dry_run else "removed"
        for ref in removal.removed:
            out.print(f"{verb} {ref}", highlight=False)
        for ref, cause in removal.refused.items():
            err.print(f"[red]not removed[/red] {ref}: {cause}", highlight=False)
    return 1 if removal.refused else 0


def cmd_base_ls(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    # Every registered runtime's bases, the default runtime's first (as before there were others).
    images = [
        (runtime, image)
        for runtime in sorted(RUNTIMES.values(), key=lambda r: r.name != get_runtime().name)
        for image in sorted(manager.bases.available(runtime), key=lambda i: i.minor_key)
    ]
    if args.json:
        _print_json([{**i.model_dump(mode="json"), "runtime": r.name} for r, i in images])
        return 0
    _print_table(
        ("runtime", "version", "image", "exact version", "on this host"),
        [
            (r.display_name, i.minor, i.reference, i.python_version or "?", "yes" if i.present else "no (pulled on use)")
            for r, i in images
        ],
    )
    return 0


def cmd_base_bootstrap(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    # Neither --python nor --node: every version of every runtime bootstrap knows.
    everything = not args.python and not args.node
    wanted = [
        ("python", minor, args.repository, BOOTSTRAP_SUITES)
        for minor in (args.python or (sorted(BOOTSTRAP_SUITES) if everything else []))
    ]
    wanted += [
        ("nodejs", major, args.node_repository, NODE_BOOTSTRAP_SUITES)
        for major in (args.node or (sorted(NODE_BOOTSTRAP_SUITES) if everything else []))
    ]
    done: dict[str, str] = {}
    for runtime, minor, repository, suites in wanted:
        reference = f"{repository}:{minor}"
        if manager.engine.inspect_image(reference) is not None and not args.force:
            done[reference] = "exists"
        else:
            with err.status(f"bootstrapping {reference} from Debian {suites.get(minor, '?')}"):
                bootstrap(minor, repository=repository, runtime=runtime)
            done[reference] = "built"
        if not args.json:
            out.print(f"{reference} exists" if done[reference] == "exists" else f"built {reference}", highlight=False)
    if args.json:
        _print_json([{"image": ref, "outcome": outcome} for ref, outcome in done.items()])
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
        raise InvalidSpecError(_pydantic_message(exc), field="limits") from None
    runner = ActionRunner(args.packs_dir, manager)
    with err.status(f"running {args.action_ref}", spinner="dots"):
        # One run per process: a warm container would only outlive it, so the CLI runs cold.
        result = runner.run(
            args.action_ref,
            parameters,
            secrets,
            limits=limits,
            environment=environment,
            execution_id=args.execution_id,
            warm=False,
        )
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        if result.stdout:
            sys.stdout.write(result.stdout)
        if result.stderr:
            sys.stderr.write(result.stderr)
        colour = "green" if result.succeeded else "red"
        err.print(
            f"[{colour}]{result.status.value}[/{colour}] {result.action_ref} in {result.duration_ms} ms "
            f"(exit code {result.exit_code})",
            highlight=False,
        )
        if result.error is not None:
            err.print(f"{result.error.type}: {result.error.message}", markup=False, highlight=False)
            if result.error.traceback:
                err.print(result.error.traceback.rstrip(), markup=False, highlight=False)
        print(json.dumps(result.result, indent=2, ensure_ascii=False))
    return _run_exit_code(result.status, result.error.type if result.error else None)


def _run_exit_code(status: ExecutionStatus, error_type: str | None) -> int:
    """0 succeeded; 3 the engine did not answer; 2 when the pack was refused on the way (its spec,
    its Python range: found when its image is ensured, so the result carries our error's class
    name); 4, 5, 6 when the registry refused the credentials, is not trusted, does not answer; 1 for
    everything else, the action's own failures, timeouts and OOM included."""
    if status is ExecutionStatus.succeeded:
        return 0
    if status is not ExecutionStatus.error or error_type is None:
        return 1
    if error_type == "EngineUnavailable":
        return 3
    ours = getattr(error_types, error_type, None)
    if isinstance(ours, type) and issubclass(ours, AttuneContainersError):
        return ours.exit_code
    return 1


def cmd_serve(args: argparse.Namespace, manager: ContainerDependencyManager) -> int:
    from .http_api import serve

    if args.socket and args.port:
        raise InvalidSpecError("give --socket or --port, not both", field="serve")

    def announce(where: str) -> None:  # once every check passed and the socket exists
        if args.json:  # for a supervisor that waits for the service to be ready
            print(json.dumps({"serving": str(args.packs_dir), "on": where, "openapi": "/openapi.json"}), flush=True)
        err.print(f"serving {args.packs_dir} on {where} (OpenAPI at /openapi.json); Ctrl-C or SIGTERM stops it", highlight=False)

    try:
        serve(
            args.packs_dir,
            socket=args.socket,
            host=args.host,
            port=args.port or 8765,
            manager=manager,
            allow_remote=args.allow_remote,
            announce=announce,
            log_level=args.log_level,
        )
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the signal it shut down on: a requested stop is a clean exit
    return 0


# -- parser --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors (exit 2) are a JSON document on stdout too under --json."""

    json_errors = False

    def error(self, message: str):
        if _Parser.json_errors:
            doc = problems.problem(422, message).model_dump()
            print(json.dumps({**doc, "exit_code": 2}, sort_keys=True))
        super().error(message)


def cmd_completion(args: argparse.Namespace, manager: ContainerDependencyManager | None) -> int:
    import shtab

    # A static script from the parser itself: no Python runs at completion time.
    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="attune-containers",
        description="Build and manage one container image per Attune pack.",
        epilog="Exit codes: 0 success, 1 the operation failed, 2 invalid input, 3 the Docker engine is unreachable.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pack_help = "a pack directory, its pack.yaml, an API JSON file, or - for API JSON on stdin"

    def add(name: str, fn: Callable[..., int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        return p

    def add_json(p: argparse.ArgumentParser, what: str = "machine-readable output") -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help=f"{what} on stdout as JSON; an error too")
        return p

    def add_runtime(p: argparse.ArgumentParser, what: str) -> None:
        # A pack with Python and Node.js actions has an image of each.
        p.add_argument("--runtime", metavar="RUNTIME", help=f"{what}: {', '.join(RUNTIMES)}")

    def add_listing(p: argparse.ArgumentParser, what: str) -> argparse._MutuallyExclusiveGroup:
        shown = p.add_mutually_exclusive_group()  # one way of showing at a time
        shown.add_argument("--json", action="store_true", help=f"{what} as JSON; an error too")
        shown.add_argument("-q", "--quiet", action="store_true", help="only image IDs (12 hex digits, as docker's -q)")
        shown.add_argument("--format", metavar="TEMPLATE", help=FORMAT_HELP)
        return shown

    p = add("render", cmd_render, "Print the Dockerfile that would be built for a pack (no engine needed)")
    p.add_argument("pack", help=pack_help)
    p.add_argument("--requirements", action="store_true", help="print the requirements file instead")
    add_runtime(p, "render this runtime's image (needed for a pack with several)")
    add_json(p, "the Dockerfile and the requirements")

    p = add("validate", cmd_validate, "Check a pack's spec (no engine needed), and with --image its built image")
    p.add_argument("pack", help=pack_help)
    p.add_argument("--image", action="store_true", help="also check that the pack's image runs")
    add_runtime(p, "only this runtime's spec (default: every runtime of the pack)")
    add_json(p, "the report")

    p = add("build", cmd_build, "Build a pack's image (or every pack's) unless it exists (idempotent)")
    p.add_argument("pack", nargs="?", help=pack_help)
    p.add_argument(
        "--all",
        nargs="?",
        const=True,
        default=False,
        metavar="PACKS_DIR",
        help="every pack of --packs-dir, in parallel (--all PACKS_DIR is the older spelling)",
    )
    p.add_argument("--packs-dir", help="the packs tree (PACKS/<pack>/pack.yaml), with --all")
    p.add_argument("--jobs", type=int, default=2, help="builds at once with --all (default 2)")
    p.add_argument("--push", action="store_true", help="push to the registry (ATTUNE__CONTAINERS__REGISTRY)")
    p.add_argument(
        "--manifest",
        metavar="FILE",
        help="with --all --push: write the trusted manifest (each pack's pushed image by digest) "
        "that workers read from ATTUNE__CONTAINERS__TRUSTED_MANIFEST",
    )
    p.add_argument("--offline", action="store_true", help="use the wheel cache only, networking off")
    p.add_argument("-v", "--verbose", action="store_true", help="stream the build log")
    add_runtime(p, "with PACK: only this runtime's image (default: every runtime of the pack)")
    add_json(p, "the outcome")

    p = add("ls", cmd_ls, "List pack images: size, last use, whether current")
    p.add_argument("--pack", help="only this pack_ref")
    p.add_argument("--packs-dir", help="tell current images by this packs tree (default: the last built or used)")
    add_listing(p, "every image")

    p = add("prune", cmd_prune, "Remove old pack images and build leftovers; criteria combine (AND)")
    p.add_argument("--keep", type=int, metavar="N", help="keep the newest N images of each pack (the current one counts)")
    p.add_argument("--older-than", metavar="DURATION", help="only images not used or created within this (7d, 12h, 1d12h)")
    p.add_argument("--orphans", action="store_true", help="only images of packs missing from --packs-dir")
    p.add_argument("--packs-dir", help="the packs tree (PACKS/<pack>/pack.yaml): which packs exist, and their current images")
    p.add_argument("--pack", help="only this pack's images (build leftovers are then left alone)")
    p.add_argument("--include-current", action="store_true", help="current images may go too")
    p.add_argument("--no-leftovers", action="store_true", help="leave build leftovers alone")
    p.add_argument(
        "--leftover-grace",
        metavar="DURATION",
        help="leftovers younger than this stay (default: 1h, or the build timeout if longer)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would go; remove nothing")
    add_json(p, "the report")

    p = add("inspect", cmd_inspect, "Show a pack's current image (exit 1 when it has none)")
    p.add_argument("pack_ref", help="the pack, e.g. hello_requests")
    add_runtime(p, "only this runtime's image (default: each runtime's current image)")
    add_listing(p, "the whole EnvironmentInfo").add_argument(
        "--lock", action="store_true", help="print its lock: every distribution pinned with its sha256"
    )

    p = add("rm", cmd_rm, "Remove a pack's images (of this image_prefix only; exit 1 when it has none)")
    p.add_argument("pack_ref", help="the pack, e.g. hello_requests")
    p.add_argument("--image", metavar="HASH", help="only the image whose dependency hash (tag) or image ID starts with this")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    add_json(p, "what was removed and refused")

    p = add("run", cmd_run, "Run an action in its pack's image and print its result")
    p.add_argument("action_ref", help="<pack_ref>.<action name>")
    p.add_argument("--packs-dir", required=True, help="the packs tree: PACKS/<pack_ref>/pack.yaml")
    p.add_argument("--params", help="parameters as a JSON object")
    p.add_argument("--params-file", help="parameters from a JSON file")
    p.add_argument("--secrets-file", help="secrets from a JSON file (never on the command line)")
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="an extra environment variable")
    p.add_argument("--timeout", type=float, help="seconds (default: the action's, else 300)")
    p.add_argument("--execution-id", help="the caller's id of this execution (default: a new one); a container label")
    p.add_argument("--memory", type=_memory, metavar="SIZE", help="e.g. 256m or 1g, binary units (swap is never allowed)")
    p.add_argument("--cpus", type=float, help="CPUs, fractions allowed (default 1.0)")
    p.add_argument("--network", help="none (default), bridge or a named network")
    p.add_argument(
        "--manifest",
        dest="trusted_manifest",
        metavar="FILE",
        help="the trusted manifest (`build --all --push --manifest FILE`): pull only the digests it "
        "names (the trusted_manifest setting)",
    )
    add_json(p, "the whole ExecutionResult")

    p = add("serve", cmd_serve, "Serve executions over HTTP (Unix socket or loopback) with warm pools")
    p.add_argument("--packs-dir", required=True, help="the packs tree: PACKS/<pack_ref>/pack.yaml")
    p.add_argument("--socket", help="a Unix socket path (recommended)")
    p.add_argument("--host", default="127.0.0.1", help="loopback address with --port")
    p.add_argument("--port", type=_port, help="a TCP port on --host, 1 to 65535 (default 8765 without --socket)")
    p.add_argument(
        "--allow-remote", action="store_true", help="let --host be a non-loopback address; needs a token (service_token_file)"
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="the service's log (JSON lines on stderr, an access log included); default info",
    )
    p.add_argument(
        "--manifest",
        dest="trusted_manifest",
        metavar="FILE",
        help="the trusted manifest (`build --all --push --manifest FILE`): pull only the digests it "
        "names (the trusted_manifest setting)",
    )
    add_json(p, "one line once the service is ready, where it listens")

    p = add("cache", lambda a, m: 0, "The shared wheel cache of builds: its size, or prune it")
    cache = p.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    c = cache.add_parser(
        "ls", help="where the cache is and how much it holds", description="Where the cache is and how much it holds"
    )
    add_json(c, "its statistics")
    c.set_defaults(func=cmd_cache)
    c = cache.add_parser(
        "prune",
        help="remove least recently used files down to a size",
        description="Remove least recently used files down to a size",
    )
    c.add_argument(
        "--max-bytes", type=_size, metavar="SIZE", help="e.g. 500m or 2g, binary units (default: the configured cache_max_bytes)"
    )
    c.add_argument("--all", action="store_true", help="empty the cache")
    add_json(c, "what was removed and what is left")
    c.set_defaults(func=cmd_cache)

    p = add("base", lambda a, m: 0, "Base images: list them, or bootstrap local ones")
    base = p.add_subparsers(dest="base_command", required=True, metavar="COMMAND")
    b = base.add_parser(
        "ls",
        help="Which Python and Node.js versions are available, from which image",
        description="Which Python and Node.js versions are available, from which image",
    )
    add_json(b, "every configured base image")
    b.set_defaults(func=cmd_base_ls)
    b = base.add_parser(
        "bootstrap",
        help="Build local base images from Debian suites (debootstrap)",
        description="Build local base images from Debian suites (debootstrap)",
    )
    b.add_argument(
        "--python",
        action="append",
        choices=sorted(BOOTSTRAP_SUITES),
        help="a Python minor version; repeat for several (default without --node: all)",
    )
    b.add_argument(
        "--node",
        action="append",
        choices=sorted(NODE_BOOTSTRAP_SUITES),
        help="a Node.js major version; repeat for several (default without --python: all)",
    )
    b.add_argument("--repository", default="attune-base/python", help="repository of the Python images made")
    b.add_argument("--node-repository", default=NODE_BOOTSTRAP_REPOSITORY, help="repository of the Node.js images made")
    b.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    add_json(b, "each image and whether it was built")
    b.set_defaults(func=cmd_base_bootstrap)

    p = add(
        "completion",
        cmd_completion,
        "Print a shell completion script: "
        'eval "$(attune-containers completion bash)", or save it where your shell loads completions',
    )
    p.add_argument("shell", choices=("bash", "zsh", "tcsh"), help="the shell")
    return parser


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so every `finally` runs and no container is left behind.
    raise KeyboardInterrupt


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError, or a config file that does not parse
        raise ConfigurationError(_pydantic_message(exc)) from None


def _json_error(exc: AttuneContainersError) -> None:
    """The error as the service's problem document, with the exit code: what a script reads."""
    status = problems.status_of(exc)
    if exc.exit_code == 2 and status not in (404, 422):
        status = 422  # invalid input of the CLI's own (the configuration): not the engine's error
    doc = problems.problem(status, str(exc), field=getattr(exc, "field", None)).model_dump()
    print(json.dumps({**doc, "exit_code": exc.exit_code}, sort_keys=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_errors = "--json" in argv
    args = parser.parse_args(argv)
    if args.func is cmd_completion:
        return cmd_completion(args, None)  # needs no configuration and no engine
    signal.signal(signal.SIGTERM, _terminate)
    try:
        settings = _settings()
        if getattr(args, "trusted_manifest", None):
            # Read now: a worker given a manifest it cannot read must not start and fail every pull.
            from .services.manifest import TrustManifest

            TrustManifest.load(args.trusted_manifest)
            settings = settings.model_copy(update={"trusted_manifest": Path(args.trusted_manifest)})
        manager = ContainerDependencyManager(settings)
        return args.func(args, manager)
    except AttuneContainersError as exc:
        # Bad input has its own errors (InvalidSpecError, InvalidPolicyError: exit 2). Any other
        # exception, a ValueError included, is a bug: it is not dressed up as one of these.
        if getattr(args, "json", False):
            _json_error(exc)
        what = "invalid configuration" if isinstance(exc, ConfigurationError) else "error"
        err.print(Text.assemble((f"{what}:", "red"), f" {exc}"), highlight=False)  # never markup: packs' words
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
