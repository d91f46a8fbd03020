"""Running the ``strata`` command line from tests, and reading what it prints.

Every call has a timeout and returns a ``CliResult``; ``strata(broker, ...)`` points the
command line at a harness ``Broker`` (``--addr 127.0.0.1:<quic port> --ca <data-dir>/tls/ca.pem``,
given before the subcommand) and, by default, fails the test on a non-zero exit with the
command, its exit code and its stderr.

The environment is the test run's minus every ``STRATA_*`` variable (so a developer's
settings never leak in) and minus ``RUST_LOG`` (log lines would pollute stderr, where the
one-line error messages are checked).

Output parsing is deliberately loose about layout and strict about content: a table is
lines of whitespace-separated cells; a value "appears on a line" when it is a whole word
there (``100000`` does not match ``1000000``, ``topic-a`` does not match ``topic-ab``).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness import STRATA_BIN, die_with_us, require_binary

CLI_TIMEOUT = float(os.environ.get("STRATA_TEST_CLI_TIMEOUT", "120"))


@dataclass
class CliResult:
    args: list[str]
    code: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def describe(self) -> str:
        out = self.stdout if len(self.stdout) < 3000 else self.stdout[:3000] + "…"
        return (f"$ {' '.join(self.args)}\nexit code {self.code} after {self.elapsed:.1f}s\n"
                f"--- stdout ---\n{out}\n--- stderr ---\n{self.stderr[-3000:]}")


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_") and k != "RUST_LOG"}
    env["RUST_BACKTRACE"] = "1"
    env.update(extra or {})
    return env


def run_cli(args: Sequence[str], *, input: str | bytes | None = None, timeout: float = CLI_TIMEOUT,
            env: dict[str, str] | None = None, cwd: Path | None = None) -> CliResult:
    """``strata <args>``; never raises on a non-zero exit (a timeout fails the test)."""
    require_binary()
    cmd = [str(STRATA_BIN), *map(str, args)]
    data = input.encode() if isinstance(input, str) else input
    start = time.monotonic()
    try:
        proc = subprocess.run(die_with_us(cmd), input=data, capture_output=True, timeout=timeout,
                              env=cli_env(env), cwd=cwd,
                              stdin=None if data is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        err = (exc.stderr or b"").decode(errors="replace")[-2000:]
        raise AssertionError(f"`{' '.join(cmd)}` did not finish within {timeout:.0f}s\n"
                             f"--- stderr so far ---\n{err}") from None
    return CliResult(cmd, proc.returncode, proc.stdout.decode("utf-8"),
                     proc.stderr.decode("utf-8", errors="replace"), time.monotonic() - start)


def broker_flags(broker, *, addr: str | None = None, ca: str | Path | None = None,
                 cert: str | Path | None = None, key: str | Path | None = None) -> list[str]:
    flags = ["--addr", addr or f"127.0.0.1:{broker.quic_port}",
             "--ca", str(ca or broker.data_dir / "tls" / "ca.pem")]
    if cert is not None:
        flags += ["--cert", str(cert), "--key", str(key)]
    return flags


def strata(broker, *args, input: str | bytes | None = None, timeout: float = CLI_TIMEOUT,
           check: bool = True, addr: str | None = None, ca: str | Path | None = None,
           cert: str | Path | None = None, key: str | Path | None = None,
           env: dict[str, str] | None = None) -> CliResult:
    """``strata --addr … --ca … <args>`` against ``broker``."""
    result = run_cli(broker_flags(broker, addr=addr, ca=ca, cert=cert, key=key) + list(args),
                     input=input, timeout=timeout, env=env)
    if check:
        assert result.code == 0, f"strata failed:\n{result.describe()}"
    return result


# ---------------------------------------------------------------------------- output


def has_word(line: str, word: str) -> bool:
    """``word`` appears in ``line`` as a whole cell/word (not inside a longer name or number)."""
    return re.search(rf"(?<![\w.\-]){re.escape(word)}(?![\w.\-])", line) is not None


def lines_with(text: str, *words: str) -> list[str]:
    """The lines of ``text`` on which every one of ``words`` appears as a whole word."""
    return [line for line in text.splitlines() if all(has_word(line, w) for w in words)]


def table_after_header(text: str, header_has: str) -> tuple[list[str], list[list[str]]]:
    """The first table whose header line has a column containing ``header_has``
    (case-insensitive): (header cells upper-cased, rows of whitespace-separated cells).

    Header cells may be several words (``END OFFSET``) when columns are separated by two or
    more spaces, as aligned tables are; row cells are single words. Rows are the lines right
    under the header with as many cells as it has, up to a blank line or another count.
    """
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if header_has.upper() not in line.upper():
            continue
        following = lines[i + 1].split() if i + 1 < len(lines) else []
        candidates = [re.split(r"\s{2,}", line.strip()), line.split()]
        header = next((c for c in candidates if len(c) == len(following)), candidates[0])
        if not any(header_has.upper() in c.upper() for c in header):
            continue
        header = [c.upper() for c in header]
        rows = []
        for row in lines[i + 1:]:
            cells = row.split()
            if not cells or len(cells) != len(header):
                break
            rows.append(cells)
        return header, rows
    raise AssertionError(f"no table with a {header_has!r} column in:\n{text}")


def column(header: list[str], *candidates: str) -> int:
    """Index of the first header cell containing any of ``candidates`` (upper-case)."""
    for cand in candidates:
        for i, cell in enumerate(header):
            if cand in cell:
                return i
    raise AssertionError(f"no column like {candidates} in header {header}")
