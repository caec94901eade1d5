"""``termigen report RUN_DIR`` and ``termigen view RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

import click


def _run_dir(value: Path) -> Path:
    if not (value / "run.db").exists():
        raise click.UsageError(f"{value} is not a run directory (it has no run.db)")
    return value.resolve()


def register(cli: click.Group) -> None:
    @cli.command("report")
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
    def report(run_dir: Path) -> None:
        """Write RUN_DIR's report.html and browse.html (at any time, also while the run goes on)."""
        from . import PageError, write_pages

        try:
            written = write_pages(_run_dir(run_dir))
        except PageError as exc:
            for path in exc.written:
                click.echo(f"wrote {path}")
            raise click.ClickException(str(exc)) from None
        for path in written:
            click.echo(f"wrote {path}")

    @cli.command("view")
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
    @click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free port).")
    @click.option("--open", "open_browser", is_flag=True, help="Open the pages in a browser, where there is one.")
    def view(run_dir: Path, host: str, port: int, open_browser: bool) -> None:
        """Serve RUN_DIR's report and browser on loopback, regenerated as the run goes on; prints the URL."""
        from .serve import serve

        serve(_run_dir(run_dir), host=host, port=port, open_browser=open_browser)
