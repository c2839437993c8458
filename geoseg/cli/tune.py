"""``geoseg tune``: time the inference engines here so ``--backend auto`` picks the fastest."""

from __future__ import annotations

import click

from geoseg.cli.options import device_opt, model_opt


@click.command()
@model_opt
@device_opt
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for the network [default: all].",
)
@click.option(
    "--tile",
    type=click.IntRange(min=1),
    default=None,
    help="Tile edge in pixels [default: the model's].",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=4.0,
    show_default=True,
    help="Timed run per engine in all, after one warm-up call per worker.",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Engines are timed in turn this many times; each keeps its best round.",
)
@click.option(
    "--compile",
    "compile_model",
    is_flag=True,
    help="Also time torch.compile (shown, never chosen: it compiles again on every run).",
)
@click.option("--dry-run", is_flag=True, help="Measure and print, but do not store the result.")
@click.pass_context
def tune(
    ctx: click.Context,
    model: str,
    device: str,
    threads: int | None,
    tile: int | None,
    seconds: float,
    rounds: int,
    compile_model: bool,
    dry_run: bool,
) -> None:
    """Time every inference engine for MODEL on this machine and remember the fastest.

    `geoseg predict --backend auto` (the default) then runs that engine, with
    that many workers, for this model, device and thread count.  Measure again
    after changing hardware, onnxruntime or torch: a stale measurement is not
    used (the key includes them).
    """
    from geoseg.infer.tune import Measurement, tuning_path
    from geoseg.infer.tune import tune as run_tune
    from geoseg.models.checkpoint import load_checkpoint

    loaded = load_checkpoint(model, lazy=True)
    card = loaded.card
    quiet = ctx.obj.get("quiet", 0) if ctx.obj else 0
    if not quiet:
        click.echo(
            f"timing {card.architecture}/{card.encoder or '-'} on {tile or card.tile_size} px "
            f"tiles, {seconds:g} s per engine in {rounds} rounds:"
        )

    def show(m: Measurement) -> None:
        if quiet:
            return
        got = f"{m.mpx_s:7.2f} Mpx/s  ({m.tiles} tiles)" if m.mpx_s else f"failed: {m.error}"
        click.echo(f"  {m.candidate.label:<14} {got}")

    result = run_tune(
        loaded,
        card,
        device=device,
        threads=threads,
        tile=tile,
        seconds=seconds,
        rounds=rounds,
        compile=compile_model,
        store=not dry_run,
        progress=show,
    )
    where = "not stored (--dry-run)" if dry_run else f"stored in {tuning_path()}"
    click.echo(
        f"fastest: {result.label} at {result.mpx_s:.2f} Mpx/s on {result.machine.get('device')} "
        f"with {result.machine.get('threads')} threads; {where}"
    )
