"""cntr(1), generated from the CLI's own definitions so it cannot drift from ``--help``.

``python -m cntr.manpage [FILE]`` writes the page (roff, man(7) macros): the synopsis,
description and options of every subcommand come from ``cntr.cli.describe_cli`` (click's
own help records); the exit codes take their numbers from ``cntr.errors``; the
environment, files and examples are written here.  ``SOURCE_DATE_EPOCH`` fixes the date
(reproducible builds); else today's.
"""

from __future__ import annotations

import os
import sys
import time

import cntr
from cntr import errors

EXIT_CODES = [
    ("0", "success (attach, enter, exec: the command's own status, see below)"),
    (str(errors.CntrError.exit_code), "other failure: the message names the operation"),
    ("2", "usage error"),
    (str(errors.BadInput.exit_code), "bad input: a record that does not decode or match "
     "its schema, an empty pipe"),
    (str(errors.NotFound.exit_code), "no container or process matches the id, name or pid; "
     "or the --tools SOURCE is a missing directory, an unknown or a stopped container"),
    (str(errors.StaleContext.exit_code), "the context is stale: its process (or its --tools "
     "container's) is gone, was replaced, or another boot"),
    (str(errors.PermissionDenied.exit_code), "not permitted: cntr must run as root"),
    (str(errors.Unsupported.exit_code), "unsupported: a kernel feature or device is "
     "missing (e.g. /dev/fuse)"),
    (str(errors.Ambiguous.exit_code), "ambiguous: the id matches containers of more than "
     "one engine"),
    ("9", "an offline session was ended: its container was started or removed meanwhile"),
    (str(errors.SessionSetupError.exit_code), "the session could not be built; nothing ran"),
    ("126", "the command could not be executed"),
    ("127", "the command was not found"),
    ("128+N", "the command was ended by signal N; any other status is the command's own"),
]

ENVIRONMENT = [
    ("CNTR_OFFLINE_WATCH", "seconds between two questions to the engine about a stopped "
     "container during its offline session (default 1)"),
    ("CNTR_BASE_DIR", "where the container's root appears in a session (default "
     "/var/lib/cntr)"),
    ("CNTR_SETUP_TIMEOUT", "seconds a session may take to be built before cntr gives up "
     "(default 30)"),
    ("CNTR_PLAN_LOG", "file each process of a session appends the operations of its plan "
     "to as it carries them out, one JSON line each, as enter --dry-run --format json "
     "prints them (for tests)"),
    ("CNTR_SERVE_FS_LOG", "file that keeps a session's serve-fs messages (default: "
     "discarded)"),
    ("CNTR_SERVE_FS_LOOP", "how serve-fs takes FUSE requests: wire (default), uring (FUSE "
     "over io_uring, needs fuse.enable_uring=Y) or libfuse (pyfuse3's session under trio)"),
    ("CNTR_SERVE_FS_WORKERS", "threads at most that answer serve-fs's requests that can "
     "block on the host (fsync, fallocate, copy_file_range), default 8; 0 answers them "
     "on the reading thread"),
    ("CNTR_SERVE_FS_COUNTS", "file serve-fs writes the requests it answered to, by opcode "
     "as JSON, on SIGUSR1 and when it ends (its own session only; for scripts/bench)"),
    ("CNTR_SERVE_FS_INODES", "inodes serve-fs keeps at most, default 131072: past it the "
     "kernel is asked to forget the oldest unused ones (Linux 6.18+); 0 for no bound"),
    ("CNTR_CONTAINER_PATH", "set in a session: the container's own PATH, which cntr exec "
     "restores"),
    ("CNTR_HOST_ROOT", "where the host's root is mounted when cntr runs in a container "
     "(/host in a Kubernetes node debug pod): engine sockets and state are looked up below "
     "it"),
    ("DOCKER_HOST", "docker's API socket (unix://PATH; default /var/run/docker.sock)"),
    ("CONTAINER_HOST", "podman's API socket (unix://PATH; default "
     "/run/podman/podman.sock)"),
    ("CONTAINERD_ADDRESS", "containerd's socket (default: every containerd found)"),
    ("LXD_DIR", "LXD's directory (default /var/lib/lxd, then /var/snap/lxd/common/lxd)"),
    ("XDG_RUNTIME_DIR", "where a non-root user's podman socket is looked for"),
    ("SHELL", "the command a session runs when none is given (default /bin/sh)"),
    ("TERM", "passed to an interactive session; recorded by --record"),
    ("PATH", "the host's PATH is appended to the container's in a session"),
    ("SUDO_USER, SUDO_UID", "recorded in the audit log as the user who asked"),
]

FILES = [
    ("/dev/fuse", "the FUSE device serve-fs serves the host's tree through"),
    ("/var/lib/cntr", "empty directory, the mount point of the container's root in a "
     "session (CNTR_BASE_DIR)"),
    ("/dev/log", "the system log socket the audit records go to (facility authpriv)"),
    ("/var/run/docker.sock, /run/podman/podman.sock, /var/lib/lxd/unix.socket",
     "engine API sockets read to resolve names"),
    ("/run/containerd", "containerd's task state directories (init.pid of each task)"),
    ("/proc/PID/ns/*, /proc/PID/root", "the namespaces and root a session joins"),
]

EXAMPLES = [
    ("Open a shell in a docker container, with the host's tools:",
     "cntr attach my-container"),
    ("Run one command; its exit status is cntr's:", "cntr attach my-container -- ps aux"),
    ("Run a command of the container itself, in its own root:",
     "cntr exec my-container -- cat /etc/os-release"),
    ("The same attach as a pipeline of stages:",
     "cntr resolve my-container | cntr capture | cntr enter -- sh"),
    ("Save a context, and later see what changed:",
     "cntr resolve web | cntr capture > before.ctx\ncntr diff before.ctx after.ctx"),
    ("Record a session for asciinema:",
     "cntr attach --record session.cast my-container\nasciinema play session.cast"),
    ("Check the host:", "cntr doctor"),
    ("Every container of every engine:", "cntr ps"),
]


def escape(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, no leading control char."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + out if out[:1] in (".", "'") else out


def _paragraphs(text: str) -> list[str]:
    lines: list[str] = []
    for para in text.strip().split("\n\n"):
        lines += [".PP", escape(" ".join(para.split()))]
    return lines


def _options(options: list[list[str]]) -> list[str]:
    lines: list[str] = []
    for opts, help_ in options:
        lines += [".TP", f"\\fB{escape(opts)}\\fR", escape(help_)]
    return lines


def render(tree: list[dict[str, object]], date: str) -> str:
    """The page for ``tree`` (``cntr.cli.describe_cli()``)."""
    root, *commands = tree
    out = [f'.TH CNTR 1 "{date}" "cntr {cntr.__version__}" "User Commands"',
           ".\\\" generated by cntr.manpage from the CLI definitions: do not edit",
           ".nh", ".ad l",
           ".SH NAME", f"cntr \\- {escape(str(root['help']).rstrip('.').lower())}",
           ".SH SYNOPSIS"]
    out += [f"\\fBcntr\\fR {escape(str(root['usage']))}", ".br"]
    for cmd in commands:
        out += [f"\\fB{escape(str(cmd['name']))}\\fR {escape(str(cmd['usage']))}", ".br"]
    out += [".SH DESCRIPTION", *_paragraphs(str(root["help"])),
            ".PP", "The commands:"]
    for cmd in commands:
        out += [".TP", f"\\fB{escape(str(cmd['name']).split()[-1])}\\fR",
                escape(str(cmd["short"]))]
    out += [".SH OPTIONS", *_options(root["options"])]  # type: ignore[arg-type]
    out += [".SH COMMANDS"]
    for cmd in commands:
        out += [f".SS \"{escape(str(cmd['name']))} {escape(str(cmd['usage']))}\"",
                *_paragraphs(str(cmd["help"])),
                *_options(cmd["options"])]  # type: ignore[arg-type]
    out += [".SH EXIT STATUS", "Errors are one line on standard error: "
            "\\fBcntr: STAGE: what failed: why\\fR."]
    for code, text in EXIT_CODES:
        out += [".TP", f"\\fB{escape(code)}\\fR", escape(text)]
    out += [".SH ENVIRONMENT"]
    for name, text in ENVIRONMENT:
        out += [".TP", f"\\fB{escape(name)}\\fR", escape(text)]
    out += [".SH FILES"]
    for name, text in FILES:
        out += [".TP", f"\\fI{escape(name)}\\fR", escape(text)]
    out += [".SH EXAMPLES"]
    for text, example in EXAMPLES:
        out += [".PP", escape(text), ".PP", ".RS", ".nf",
                *[escape(line) for line in example.splitlines()], ".fi", ".RE"]
    out += [".SH SEE ALSO", "\\fBnsenter\\fR(1), \\fBdocker\\fR(1), \\fBasciinema\\fR(1), "
            "\\fBfuse\\fR(4), \\fBnamespaces\\fR(7)", ""]
    return "\n".join(out)


def page() -> str:
    from cntr.cli import describe_cli

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    date = time.strftime("%Y-%m-%d", time.gmtime(int(epoch) if epoch else None))
    return render(describe_cli(), date)


def main(argv: list[str]) -> int:
    text = page()
    if len(argv) > 1:
        print("usage: python -m cntr.manpage [FILE]", file=sys.stderr)
        return 2
    if argv:
        with open(argv[0], "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
