"""`craft study`: build a blinded reader study, serve it to readers, analyse the answers."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from craft_ray.cli.common import ADDRESS_HELP, console, progress_bar

app = typer.Typer(
    help="Blinded reader study: create pairs, serve the web app, analyse answers.", no_args_is_help=True
)


def _split_readers(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


@app.command("create")
def study_create(
    runs: Annotated[list[Path], typer.Option(help="run directories to compare: --runs RUN_A RUN_B ...")],
    out: Annotated[Path, typer.Option(help="study directory to write (must be absent or empty)")],
    readers: Annotated[str, typer.Option(help="access list: comma-separated reader ids")],
    n: Annotated[int, typer.Option(help="label sets; each makes one pair per two runs")] = 60,
    seed: Annotated[int, typer.Option(help="seed of label sets, image seeds, pair order and sides")] = 0,
    controls: Annotated[int, typer.Option(help="extra pairs of a real image vs a generated one")] = 0,
    split: Annotated[str, typer.Option(help="real split the label sets (and controls) come from")] = "test",
    data: Annotated[
        str | None, typer.Option(help="real dataset directory (default: the first run's dataset.uri)")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing study directory")] = False,
    more_runs: Annotated[
        list[Path] | None, typer.Argument(help="further runs (after --runs RUN_A)", show_default=False)
    ] = None,
) -> None:
    """Generate image pairs of the runs for the same label sets and seeds, sides randomised, methods hidden."""
    from craft_ray.study.build import plan_study, write_study

    all_runs = [str(r) for r in [*runs, *(more_runs or [])]]
    plan = plan_study(all_runs, out, n, seed, _split_readers(readers), controls, split, data, overwrite)
    with progress_bar("generating study images") as update:
        manifest = write_study(plan, out, update)
    table = Table(
        title=escape(f"study {out}: {manifest.pairs} pairs on {manifest.dataset} [{manifest.split}]")
    )
    for col in ("source", "method", "run"):
        table.add_column(col)
    for source in manifest.sources:
        table.add_row(source.name, source.method, source.run or "-")
    console.print(table)
    _print_tokens(plan.tokens)
    console.print(f"serve it with: craft study serve --study {out}")


def _print_tokens(tokens: dict[str, str], port: int = 8000) -> None:
    """Each reader's link, once: the study keeps only the tokens' hashes. One line per reader, never
    wrapped, so a link copies whole."""
    from craft_ray.study.access import reader_link

    console.print(
        f"reader links for `craft study serve --port {port}` (shown once: send each reader their own; "
        "the study keeps only hashes; `craft study token` issues a new one):"
    )
    for reader, token in tokens.items():
        console.print(
            escape(f"  {reader}: {reader_link(f'http://127.0.0.1:{port}', reader, token)}"), soft_wrap=True
        )


@app.command("token")
def study_token(
    study: Annotated[Path, typer.Option(help="study directory (craft study create)")],
    reader: Annotated[str, typer.Option(help="reader id: a new reader, or one whose token is lost")],
    port: Annotated[int, typer.Option(help="port of the link printed")] = 8000,
) -> None:
    """Issue a new access token for a reader (added to the access list when new); the old token of
    that reader stops working. A running app admits the new token without a restart."""
    from craft_ray.study.access import issue
    from craft_ray.study.layout import StudyDir, check_reader_id, write_manifest

    check_reader_id(reader)
    root = StudyDir(study)
    manifest = root.manifest()
    tokens, hashes = issue([reader])
    readers = manifest.readers if reader in manifest.readers else [*manifest.readers, reader]
    updated = manifest.model_copy(
        update={"readers": readers, "reader_tokens": {**manifest.reader_tokens, **hashes}}
    )
    write_manifest(root.root, type(manifest).model_validate(updated.model_dump()))
    console.print(f"{'new token for' if reader in manifest.readers else 'added'} reader {escape(reader)}")
    _print_tokens(tokens, port)


@app.command("serve")
def study_serve(
    study: Annotated[Path, typer.Option(help="study directory (craft study create)")],
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1")] = 8000,
    replicas: Annotated[int, typer.Option(help="Serve replicas of the app")] = 1,
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
) -> None:
    """Serve the reader-study web app with Ray Serve on 127.0.0.1 until Ctrl-C."""
    from ray import serve

    from craft_ray.raycluster import ensure_ray
    from craft_ray.serving.study_app import build_app

    application = build_app({"study": str(study), "num_replicas": replicas})
    console.print(ensure_ray(address))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(application, name="study", route_prefix="/")
    console.print(f"reader study at http://127.0.0.1:{port}/  (Ctrl-C to stop)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops it as cleanly as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.delete("study")


@app.command("analyze")
def study_analyze(
    study: Annotated[Path, typer.Option(help="study directory with answers")],
    out: Annotated[Path | None, typer.Option(help="output directory (default: <study>/analysis)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing analysis directory")] = False,
) -> None:
    """Preference rates (one vote per pair: the majority of its readers) with Wilson CIs and sign
    tests, no-preference rate, kappa, time per pair."""
    from craft_ray.study.analysis import analyze_study
    from craft_ray.study.report import CHART, MARKDOWN, write_report

    analysis = analyze_study(study)
    target = write_report(analysis, out or Path(study) / "analysis", overwrite)
    table = Table(title=escape(f"{len(analysis.judgements)} answers from {len(analysis.readers)} reader(s)"))
    for col in ("comparison", "label", "pairs", "first preferred [95% CI]", "sign p", "no preference"):
        table.add_column(col)
    for r in analysis.preferences:
        table.add_row(
            escape(f"{r['first']} vs {r['second']}"),
            escape(r["label"]),
            str(r["pairs"]),
            f"{r['first_rate']:.0%} [{r['first_rate_low']:.0%}, {r['first_rate_high']:.0%}]",
            f"{r['sign_test_p']:.3g}",
            f"{r['no_preference_rate']:.0%}",
        )
    console.print(table)
    agree = analysis.agreement
    if agree["kappa"] is not None:
        console.print(f"{agree['statistic']}: {agree['kappa']:.3f} over {agree['pairs']} pairs")
    console.print(f"median time per pair: {analysis.times['median_s']:.1f} s")
    console.print(f"wrote {target / MARKDOWN} and {target / CHART}")
