"""``ersilia_pack run``: a file of inputs through a served model or a local bundle, with its
progress on stderr; a signal stops it after the rows in flight."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ersilia_pack.commands.common import HELP_OPTIONS, logging_options, setup_logging

if TYPE_CHECKING:
    from ersilia_pack.batch import Progress


class _ProgressView:
    """Progress of ``ersilia_pack run``: a bar redrawn in place on a terminal, else a plain log
    line every few seconds."""

    WIDTH = 28

    def __init__(self, *, terminal: bool, quiet: bool, every: float = 5.0) -> None:
        self.terminal = terminal and not quiet
        self.quiet = quiet
        self.every = every
        self.shown = 0.0
        self.drawn = False

    @staticmethod
    def _duration(seconds: float | None) -> str:
        if seconds is None:
            return "?"
        minutes, secs = divmod(int(seconds + 0.5), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours}:{minutes:02d}:{secs:02d}"

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        final = progress.done >= progress.total
        share = progress.done / progress.total if progress.total else 1.0
        text = (
            f"{progress.done:,}/{progress.total:,} rows ({share:.0%}), "
            f"{progress.rate:,.0f} rows/s, {self._duration(progress.left)} left"
        )
        if self.terminal:
            if final or now - self.shown >= 0.1:
                filled = int(share * self.WIDTH)
                bar = "#" * filled + "-" * (self.WIDTH - filled)
                sys.stderr.write(f"\r{progress.stage} [{bar}] {text}\033[K")
                sys.stderr.flush()
                self.shown, self.drawn = now, True
        elif not self.quiet and (final or now - self.shown >= self.every):
            logging.getLogger("ersilia_pack").info("%s: %s", progress.stage, text)
            self.shown = now

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM ask the run to stop after the rows in flight; a second one stops it
    at once (what was recorded stays: a rerun continues from there)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        # No logging here: a handler may run while the logging lock is held.
        os.write(2, b"\nstopping after the rows in flight (again to stop at once)\n")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.command("run", context_settings=HELP_OPTIONS)
@click.option("--url", default=None, help="a served model: the inputs go through a job on it")
@click.option(
    "--repository_dir",
    "--repository-dir",
    "repository_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="a model's repository folder (or a bundle): run it here, with no server",
)
@click.option(
    "-i",
    "--input",
    "input_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="a CSV with a header (the input column chosen as the server chooses it: input, "
    "smiles, text, ...), or one input per line",
)
@click.option(
    "-o",
    "--output",
    "output_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="a .csv (input, then the columns) or .json (a list of records) file",
)
@click.option("--api", default="run", show_default=True, help="the API to run")
@click.option(
    "--api-key",
    "api_key",
    envvar="ERSILIA_PACK_API_KEY",
    default=None,
    help="the server's API key, with --url (or set ERSILIA_PACK_API_KEY)",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="with --repository_dir: workers per API (default: as ersilia_serve picks)",
)
@click.option(
    "--chunk-size",
    "chunk_size",
    type=click.IntRange(1),
    default=None,
    help="rows computed (or downloaded) and recorded at a time",
)
@click.option(
    "--dask",
    default=None,
    metavar="ADDRESS",
    help="with --repository_dir: compute on this Dask scheduler (tcp://HOST:8786); the bundle "
    "must sit where every worker reads it",
)
@logging_options
def run_cli(
    url: str | None,
    repository_dir: Path | None,
    input_path: Path,
    output_path: Path,
    api: str,
    api_key: str | None,
    workers: int | None,
    chunk_size: int | None,
    dask: str | None,
    verbose: bool,
    quiet: bool,
) -> None:
    """Run a file of inputs through a model into a CSV or JSON file.

    Stopped (Ctrl-C) and run again with the same arguments, it goes on where it stopped.
    """
    from ersilia_pack.batch import Interrupted, run_batch  # the client (httpx) only when used

    if (url is None) == (repository_dir is None):
        raise click.UsageError("give one of --url and --repository_dir")
    if dask is not None and repository_dir is None:
        raise click.UsageError("--dask computes a bundle: give --repository_dir, not --url")
    if verbose or quiet:
        setup_logging(verbose, quiet)
    if not verbose:  # a local run's job is how its rows are computed, not news: shown with -v
        logging.getLogger("ersilia_pack.runtime.jobs").setLevel(logging.WARNING)
    view = _ProgressView(terminal=sys.stderr.isatty(), quiet=quiet)
    try:
        with _stop_on_signals() as stop:
            summary = run_batch(
                input_path=input_path,
                output_path=output_path,
                api=api,
                url=url,
                repository_dir=repository_dir,
                api_key=api_key,
                workers=workers,
                chunk_size=chunk_size,
                progress=view,
                should_stop=stop.is_set,
                dask=dask,
            )
    except KeyboardInterrupt:
        view.close()
        raise Interrupted(
            "interrupted: run the same command again to continue from the last recorded rows"
        ) from None
    finally:
        view.close()
    earlier = f", {summary.resumed:,} of them from an earlier run" if summary.resumed else ""
    click.echo(
        f"wrote {summary.total:,} rows to {summary.output} "
        f"({summary.failed:,} without values{earlier})"
    )
