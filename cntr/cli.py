"""The command line: parse arguments, call one stage, map errors to exit codes.

The only module that imports click.  Stages are imported inside each command, so a
command pays only for what it uses (``enter`` never imports trio or pyfuse3).
Errors print one line, ``cntr: STAGE: message``, and exit with the code documented in
``cntr.errors``; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from cntr.errors import BadInput, run_stage

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = click.Choice(["msgpack", "json"])


def _run(stage: str, fn: Callable[[], int | None]) -> NoReturn:
    debug = bool(click.get_current_context().find_root().params.get("debug"))
    run_stage(stage, fn, debug=debug, fast_exit=FAST_EXIT)


FAST_EXIT = True
"""Exit with os._exit after a command; tests calling ``main`` in-process turn it off."""


def _print_version(ctx: click.Context) -> None:
    if ctx.resilient_parsing:
        return  # shell completion parses the line without acting on it
    from cntr import version

    click.echo(version.text(), nl=False)
    ctx.exit()


def _types(value: str | None) -> list[str] | None:
    if not value:
        return None
    from cntr import engines

    try:
        return engines.parse_types(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _effective_user(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        entry = pwd.getpwuid(int(value)) if value.isdigit() else pwd.getpwnam(value)
    except (KeyError, ValueError):
        if value.isdigit():
            return (int(value), int(value))
        raise click.BadParameter(f"no user {value!r} on the host") from None
    return (entry.pw_uid, entry.pw_gid)


def _out_format(fmt: str | None) -> str:
    if fmt:
        return fmt
    return "json" if sys.stdout.isatty() else "msgpack"


def _write_record(record: Any, fmt: str | None) -> None:
    from cntr import context

    data = context.encode(record, _out_format(fmt))
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _read_stdin_record(stage: str) -> bytes:
    from cntr import context

    if sys.stdin.isatty():
        raise BadInput(f"{stage} reads a record on stdin (a pipe from the previous stage)")
    return context.read_stream(sys.stdin.buffer)


def _complete_types(_ctx: click.Context, _param: click.Parameter,
                    incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    from cntr import complete

    return [CompletionItem(t) for t in complete.types(incomplete)]


def _complete_ids(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
    """Running containers of every engine (or of -t TYPES), names and ids."""
    from click.shell_completion import CompletionItem

    from cntr import complete

    try:
        types = _types(ctx.params.get("types"))
    except click.BadParameter:
        types = None
    return [CompletionItem(value, help=text)
            for value, text in complete.candidates(incomplete, types)]


def _complete_tools(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """``--tools SOURCE``: directories for a path, else containers, ``ENGINE:NAME`` too."""
    from click.shell_completion import CompletionItem

    from cntr import complete

    if incomplete.startswith(("/", ".")):
        return [CompletionItem(incomplete, type="dir")]
    engine, colon, name = incomplete.rpartition(":")
    if colon:
        try:
            types = _types(engine)
        except click.BadParameter:
            return []
        return [CompletionItem(f"{engine}:{value}", help=text)
                for value, text in complete.candidates(name, types)]
    return [CompletionItem(value, help=text) for value, text in complete.candidates(incomplete)]


def _complete_exec_args(ctx: click.Context, param: click.Parameter,
                        incomplete: str) -> list[Any]:
    # from the host the first word is the container: cntr exec ID -- CMD
    if ctx.params.get("args") or os.environ.get("CNTR_CONTAINER_PATH"):
        return []
    return _complete_ids(ctx, param, incomplete)


def _types_option(f: F) -> F:
    return click.option(
        "-t", "--type", "types", metavar="TYPES", shell_complete=_complete_types,
        help="Engines to ask, comma-separated: process_id, docker, podman, lxc, lxd, "
        "nspawn, containerd, kubernetes, rkt, command.",
    )(f)


def _tools_option(f: F) -> F:
    return click.option(
        "--tools", metavar="SOURCE",
        help="Serve SOURCE as / instead of the host's /: a directory (starting with / or "
        "'.'), or a container ([ENGINE:]NAME, resolved as ID is; -t applies to ID only).",
    )(f)


def _with_tools(ctx: Any, tools: str | None) -> Any:
    if tools is None:
        return ctx
    from cntr.record import replace
    from cntr.stages.capture import capture_tools

    return replace(ctx, tools=capture_tools(tools))


def _effective_user_option(f: F) -> F:
    return click.option(
        "--effective-user", metavar="USER",
        help="Host user (name or uid) that owns files the session creates on the host.",
    )(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, _p, v: _print_version(ctx) if v else None,
              help="Show the versions of cntr, Python, pyfuse3, libfuse and the kernel.")
def main(debug: bool) -> None:
    """Attach to a running container with every tool of the host at hand."""


@main.command()
@click.argument("ident", metavar="ID", shell_complete=_complete_ids)
@_types_option
@click.option("--format", "fmt", type=FORMATS, help="Output format (default: msgpack on a "
              "pipe, json on a terminal).")
def resolve(ident: str, types: str | None, fmt: str | None) -> None:
    """Resolve a container id, name or pid to its process; print the record."""

    def run() -> None:
        from cntr.stages.resolve import resolve as do_resolve

        _write_record(do_resolve(ident, _types(types)), fmt)

    _run("resolve", run)


@main.command()
@click.argument("pid", type=int, required=False)
@click.option("--format", "fmt", type=FORMATS, help="Output format (default: msgpack on a "
              "pipe, json on a terminal).")
@_tools_option
def capture(pid: int | None, fmt: str | None, tools: str | None) -> None:
    """Dump the context of PID (or of the record on stdin) as a record."""

    def run() -> None:
        from cntr import context
        from cntr.stages.capture import capture as do_capture

        resolved = None
        target = pid
        if target is None:
            record = context.read_any(_read_stdin_record("capture"), "stdin")
            if isinstance(record, context.Context):
                resolved = context.Resolved(record.engine, record.container_id,
                                            record.name, record.pid, record.start_time,
                                            record.offline)
            else:
                resolved = record
            target = resolved.pid
            if resolved.offline is not None:  # a container that is not running
                _write_record(do_capture(0, resolved), fmt)
                return
        if target <= 0:
            raise BadInput(f"invalid pid {target}")
        _write_record(_with_tools(do_capture(target, resolved), tools), fmt)

    _run("capture", run)


@main.command("serve-fs")
@click.argument("root", default="/", type=click.Path(exists=True, file_okay=False))
@click.option("--mountpoint", type=click.Path(exists=True, file_okay=False),
              help="Mount the filesystem here and serve it.")
@click.option("--fuse-fd", type=int, help="Serve an inherited /dev/fuse descriptor that "
              "another process mounted.")
@_effective_user_option
@click.option("--allowed-mnt-ns", type=int, metavar="INODE", help="Serve only processes "
              "of this mount namespace (inode of /proc/PID/ns/mnt); refuse others (EACCES).")
@click.option("--fs-debug", is_flag=True, help="Log every request.")
def serve_fs(*, root: str, mountpoint: str | None, fuse_fd: int | None,
             effective_user: str | None, allowed_mnt_ns: int | None, fs_debug: bool) -> None:
    """Serve ROOT (default /) through FUSE until it is unmounted."""
    if (mountpoint is None) == (fuse_fd is None):
        raise click.UsageError("give exactly one of --mountpoint and --fuse-fd")

    def run() -> int:
        from cntr.launch import check_host
        from cntr.stages.serve_fs import serve_fs as do_serve

        check_host()
        if fs_debug:  # the request log goes to stderr (no handler: only warnings would)
            import logging

            logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
        return do_serve(root, mountpoint=mountpoint, fuse_fd=fuse_fd,
                        effective_user=_effective_user(effective_user),
                        allowed_mnt_ns=allowed_mnt_ns, debug=fs_debug)

    _run("serve-fs", run)


def _record_option(f: F) -> F:
    return click.option(
        "--record", metavar="FILE", type=click.Path(dir_okay=False),
        help="Record the session's terminal output (its stdout on a pipe), with timing, "
        "as an asciicast v2 file (asciinema play FILE).",
    )(f)


def _recording(path: str | None, opts: Any) -> contextlib.AbstractContextManager[None]:
    if path is None:
        return contextlib.nullcontext()
    from cntr import asciicast
    from cntr.stages.enter import default_command, wants_tty

    return asciicast.recording(path, wants_tty(opts), list(opts.command) or default_command())


def _enter_options(command: tuple[str, ...], effective_user: str | None,
                   tty: bool | None, read_only: bool = False, network: str = "none") -> Any:
    from cntr.stages.enter import EnterOptions

    return EnterOptions(command=list(command), effective_user=_effective_user(effective_user),
                        tty=tty, read_only=read_only, network=network)


def _offline_options(f: F) -> F:
    f = click.option("--network", type=click.Choice(["none", "host"]), default="none",
                     help="Offline sessions: a network namespace with only loopback "
                     "(none, the default) or the host's.")(f)
    return click.option("--read-only", is_flag=True, help="Offline sessions: throw the "
                        "session's changes to the container's filesystem away.")(f)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--context", "context_file", type=click.Path(dir_okay=False),
              help="Read the context from this file instead of stdin.")
@_effective_user_option
@click.option("--tty/--no-tty", default=None, help="Force or refuse a pty (default: when "
              "stdin and stdout are terminals).")
@click.option("--dry-run", is_flag=True, help="Print the ordered plan; do none of it.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="Format of the --dry-run plan.")
@click.option("--offline", is_flag=True, help="When the context's process is gone, build "
              "an offline session from it over the container's filesystem.")
@_offline_options
@_tools_option
@_record_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def enter(*, context_file: str | None, effective_user: str | None, tty: bool | None,
          dry_run: bool, fmt: str, offline: bool, read_only: bool, network: str,
          tools: str | None, record: str | None, command: tuple[str, ...]) -> None:
    """Build the nested container from a context and run COMMAND (default: $SHELL)."""

    def run() -> int:
        from cntr import context
        from cntr.stages.enter import enter as do_enter

        if context_file:
            ctx = _read_context_file(context_file)
        else:
            if sys.stdin.isatty():
                raise BadInput("enter reads a context on stdin or from --context FILE")
            ctx = context.decode(context.Context, context.read_stream(sys.stdin.buffer),
                                 "stdin")
            if not dry_run:
                _reopen_stdin()
        ctx = _with_tools(ctx, tools)
        opts = _enter_options(command, effective_user, tty, read_only, network)
        if offline and ctx.offline is None:
            from cntr.errors import StaleContext
            from cntr.stages.enter import verify

            try:
                verify(ctx)
            except StaleContext:
                from cntr.offline import replay

                ctx = replay(ctx)
        if dry_run:
            from cntr.stages.enter import describe, verify

            verify(ctx)
            _print_plan(describe(ctx, opts), fmt)
            return 0
        with _recording(record, opts):
            return do_enter(ctx, opts)

    _run("enter", run)


def _read_context_file(path: str) -> Any:
    from cntr import context

    try:
        with open(path, "rb") as f:
            raw = context.read_stream(f)
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    return context.decode(context.Context, raw, path)


def _print_plan(steps: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        import json

        click.echo(json.dumps(steps, indent=2))
        return
    def show(v: Any) -> str:
        if isinstance(v, dict):
            return " ".join(f"{k}={show(x)}" for k, x in v.items())
        if isinstance(v, list | tuple):
            return ",".join(show(x) for x in v) or "-"
        return str(v)

    for i, step in enumerate(steps, 1):
        fields = "  ".join(f"{k}: {show(v)}" for k, v in step.items() if k != "step")
        click.echo(f"{i:2}. {step['step']} {fields}".rstrip())


@main.command()
@click.argument("before", type=click.Path(dir_okay=False))
@click.argument("after", type=click.Path(dir_okay=False))
def diff(before: str, after: str) -> None:
    """What changed between two saved contexts; exit 0 when nothing did, 1 otherwise."""

    def run() -> int:
        from cntr.stages.diff import diff as do_diff

        lines = do_diff(_read_context_file(before), _read_context_file(after))
        for line in lines:
            click.echo(line)
        return 1 if lines else 0

    _run("diff", run)


def _reopen_stdin() -> None:
    """After a context came on stdin, give the session the terminal (or nothing)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        fd = os.open("/dev/null", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("ident", metavar="ID", shell_complete=_complete_ids)
@_types_option
@_effective_user_option
@click.option("--tty/--no-tty", default=None, help="Force or refuse a pty (default: when "
              "stdin and stdout are terminals).")
@click.option("--image", is_flag=True, help="ID is an image of docker or podman: an offline "
              "session over its layers, with a throwaway writable layer.")
@_offline_options
@_tools_option
@_record_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def attach(*, ident: str, types: str | None, effective_user: str | None, tty: bool | None,
           image: bool, read_only: bool, network: str, tools: str | None,
           record: str | None, command: tuple[str, ...]) -> None:
    """Attach to container ID with the host's tools; run COMMAND (default: $SHELL)."""

    def run() -> int:
        from cntr import audit
        from cntr.stages.attach import attach as do_attach

        audit.STAGE = "attach"
        opts = _enter_options(command, effective_user, tty, read_only, network)
        with _recording(record, opts):
            if image:
                from cntr.stages.attach import attach_image

                return attach_image(ident, _types(types), opts)
            return do_attach(ident, _types(types), opts, tools)

    _run("attach", run)


@main.command("ps")
@_types_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per container.")
@click.option("-a", "--all", "show_all", is_flag=True,
              help="Also containers that are not running, with their state.")
def ps_(types: str | None, as_json: bool, show_all: bool) -> None:
    """List every attachable container on the host, across all engines."""

    def run() -> None:
        from cntr.stages.ps import ps, table

        found = ps(_types(types), show_all)
        if as_json:
            import json

            from cntr.record import asdict

            click.echo(json.dumps([asdict(m) for m in found], indent=2))
        else:
            click.echo(table(found, show_all), nl=False)

    _run("ps", run)


@main.command("exec", context_settings={"ignore_unknown_options": True})
@_types_option
@click.argument("args", nargs=-1, type=click.UNPROCESSED, shell_complete=_complete_exec_args)
def exec_(types: str | None, args: tuple[str, ...]) -> None:
    """Run a container command in the container's root and environment.

    Inside a session: cntr exec CMD [ARGS...]. From the host: cntr exec ID -- CMD [ARGS...].
    """
    argv = sys.argv[sys.argv.index("exec") + 1:] if "exec" in sys.argv else []
    from_host = "--" in argv

    def run() -> int:
        from cntr.stages import exec as stage

        if from_host:
            if not args:
                raise click.UsageError("cntr exec ID -- CMD: missing ID")
            return stage.exec_in_container(args[0], _types(types), args[1:])
        return stage.exec_in_session(args)

    _run("exec", run)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The checks as one JSON object.")
def doctor(as_json: bool) -> None:
    """Check what cntr needs on this host; exit 1 when attach cannot work."""

    def run() -> int:
        from cntr.stages import doctor as stage

        checks = stage.doctor()
        works = stage.attach_works(checks)
        if as_json:
            import json

            from cntr.record import asdict

            click.echo(json.dumps({"attach_works": works,
                                   "checks": [asdict(c) for c in checks]}, indent=2))
        else:
            click.echo(stage.report(checks), nl=False)
        return 0 if works else 1

    _run("doctor", run)


def describe_cli() -> list[dict[str, Any]]:
    """The command tree as plain data, exactly what each ``--help`` shows (for the man
    page, ``cntr.manpage``, which must not import click): the root first, then every
    subcommand in --help's order, each with its usage, help and option help records."""
    root = click.Context(main, info_name="cntr", **main.context_settings)

    def one(cmd: click.Command, ctx: click.Context) -> dict[str, Any]:
        records = [p.get_help_record(ctx) for p in cmd.get_params(ctx)
                   if isinstance(p, click.Option)]  # --help lists options only
        return {"name": ctx.command_path, "usage": " ".join(cmd.collect_usage_pieces(ctx)),
                "help": cmd.help or "", "short": cmd.get_short_help_str(limit=300),
                "options": [list(r) for r in records if r is not None]}

    out = [one(main, root)]
    for name in main.list_commands(root):
        cmd = main.get_command(root, name)
        assert cmd is not None  # listed by the group itself
        out.append(one(cmd, click.Context(cmd, info_name=name, parent=root,
                                          **cmd.context_settings)))
    return out
