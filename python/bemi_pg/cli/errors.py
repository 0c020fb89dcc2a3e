"""The one error of the command line: a failure the user can act on."""

from __future__ import annotations


class Failure(Exception):
    """A failure the user can act on, or arguments that do not fit together: printed as
    "error: ..." with exit status 1 (bemi_pg.cli.main); sqlstate when the server gave one."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
