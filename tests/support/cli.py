"""The `bucketguard` command for tests, run in this process: `main()` with its stdout and stderr captured.

Each command run this way costs what the command does, not a new interpreter's start and imports (about a second
on a loaded CI machine). For end-to-end tests whose subject is what a command reads or changes, not the command
as a process; tests of the process itself (exit codes from `python -m proxy.cli`, one-line errors, no traceback)
run it as a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import threading

from proxy.cli import main

_one_at_a_time = threading.Lock()  # the captured streams are process-wide


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`bucketguard ARGS...` in this process: returncode, stdout and stderr as a subprocess run would give them."""
    out, err = io.StringIO(), io.StringIO()
    with _one_at_a_time, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            status = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["bucketguard", *args], status, out.getvalue(), err.getvalue())
