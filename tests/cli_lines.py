"""A user's mistake as the ``fnn`` command reports it, for the tests: exit status 2 and exactly
one line on stderr, no traceback."""

from __future__ import annotations

from fnn import cli


def error_line(capsys, argv: list[str]) -> str:
    """Run ``fnn ARGV`` in this process (``fnn.cli.main``); assert it exits 2 with one line of
    stderr and no traceback; return that line."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]
