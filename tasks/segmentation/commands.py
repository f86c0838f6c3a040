"""``dnas data synth-seg``: write the built-in synthetic segmentation set (cached by manifest)."""

from __future__ import annotations

from pathlib import Path

import click

from dnas.cli import example
from dnas.files import check_writable
from dnas.registry import DATA_COMMANDS
from dnas.synthetic import already_there


@click.command("synth-seg", epilog=example("dnas data synth-seg data/synth-seg"))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--train", "n_train", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--val", "n_val", type=click.IntRange(1), default=200, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--size", "image_size", type=click.IntRange(32, 4096), default=128,
              show_default=True, help="Image side in pixels.")  # fmt: skip
@click.option("--force", is_flag=True, help="Regenerate even if OUT holds a different set.")
def synth_seg(out: Path, n_train: int, n_val: int, seed: int, image_size: int, force: bool):
    """Draw a synthetic segmentation set (ellipse, rectangle, triangle) into OUT, COCO format."""
    from tasks.segmentation.synth import SPLITS, write_synthetic_seg

    check_writable(out / "synth.json")
    wanted = {"n_train": n_train, "n_val": n_val, "seed": seed, "image_size": image_size}
    wanted["format"] = "coco-instances"
    if already_there(out, wanted, force, ["annotations", *(split for split, _ in SPLITS)]):
        click.echo(f"{out}: synthetic segmentation set already there (cached), nothing to do")
        return
    write_synthetic_seg(out, n_train, n_val, seed, image_size)
    click.echo(f"wrote {n_train} train and {n_val} val images to {out} "
               "(annotations/instances_{train,val}.json, train/, val/)")  # fmt: skip


DATA_COMMANDS.register("synth-seg")(synth_seg)
