"""The failures a user can act on, as one family of errors.

Library code raises them and never exits; each entry point (`python -m sweeper`, its preflight
check, the search sweeper, `python -m analysis.report`, `python -m sweeper.bench`) catches
`SweeperError` once, prints `err.line` and exits with `err.code`.
"""

from __future__ import annotations

import argparse
import sys


class SweeperError(Exception):
    """Its message is the one line shown; `code` is the process's exit status."""

    code = 2

    @property
    def line(self) -> str:
        return f"error: {self}"

    def show(self) -> int:
        """Print the line (stderr for an error, stdout for a clean stop); returns the code."""
        print(self.line, file=sys.stderr if self.code else sys.stdout, flush=True)
        return self.code


class ConfigError(SweeperError, ValueError):
    """A value of the config, or of a command's arguments, that is not allowed."""


def not_allowed(name: str, value: object, allowed: str) -> ConfigError:
    """The one line of a refused value: its key, the value, what is allowed."""
    return ConfigError(f"{name}={value!r} is not allowed: {allowed}")


class DataError(SweeperError, RuntimeError):
    """The data cannot be had or read."""


class RunFileError(SweeperError, ValueError):
    """A file of a run directory that its writer could not have written."""


class SearchError(SweeperError, ValueError):
    """A search that cannot run as given."""


class StorageError(SweeperError, OSError):
    """A file or folder that cannot be written: a full disk, a read-only or missing folder."""

    code = 1


class RunFailed(SweeperError):
    """A run that stopped for good with its files recorded (out of memory, a time limit that
    could not requeue it)."""

    code = 1


class Preempted(SweeperError):
    """A stop signal: the run checkpointed and recorded it; the same command resumes."""

    code = 0

    @property
    def line(self) -> str:
        return str(self)


class OneLineParser(argparse.ArgumentParser):
    """Bad command-line arguments: one line and exit code 2, as every other refused value."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
