"""``dnas data synth-mpii``: write the built-in synthetic dataset (cached by its parameters)."""

from __future__ import annotations

from pathlib import Path

import click

from dnas.registry import DATA_COMMANDS
from dnas.synthetic import already_there


@click.command("synth-mpii")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--train", "n_train", type=click.IntRange(1), default=3000, show_default=True)
@click.option("--val", "n_val", type=click.IntRange(1), default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", "image_size", type=click.IntRange(64, 4096), default=256,
              show_default=True, help="Image side in pixels.")  # fmt: skip
@click.option("--force", is_flag=True, help="Regenerate even if OUT holds a different set.")
def synth_mpii(out: Path, n_train: int, n_val: int, seed: int, image_size: int, force: bool):
    """Draw a synthetic pose dataset into OUT in the MPII (HRNet json) layout."""
    from tasks.pose.synth import write_synthetic_mpii

    wanted = {"n_train": n_train, "n_val": n_val, "seed": seed, "image_size": image_size}
    if already_there(out, wanted, force, ["images", "annot"]):
        click.echo(f"{out}: synthetic MPII set already there (cached), nothing to do")
        return
    write_synthetic_mpii(out, n_train, n_val, seed, image_size)
    click.echo(f"wrote {n_train} train and {n_val} val images to {out} "
               "(annot/train.json, annot/valid.json, annot/gt_valid.mat, images/)")  # fmt: skip


DATA_COMMANDS.register("synth-mpii")(synth_mpii)
