"""``dnas data synth-mpii``: write the built-in synthetic dataset (cached by its parameters)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from dnas.errors import DnasError
from dnas.registry import DATA_COMMANDS


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
    manifest_path = out / "synth.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if all(manifest.get(k) == v for k, v in wanted.items()):
            click.echo(f"{out}: synthetic MPII set already there (cached), nothing to do")
            return
        if not force:
            raise DnasError(f"{out} holds a different synthetic set ({manifest_path}); "
                            "pass --force to regenerate it or choose another OUT")  # fmt: skip
        for sub in ("images", "annot"):
            shutil.rmtree(out / sub, ignore_errors=True)
    elif out.exists() and any(out.iterdir()) and not force:
        raise DnasError(f"{out} is not empty and holds no synth.json; choose another OUT")
    write_synthetic_mpii(out, n_train, n_val, seed, image_size)
    click.echo(f"wrote {n_train} train and {n_val} val images to {out} "
               "(annot/train.json, annot/valid.json, annot/gt_valid.mat, images/)")  # fmt: skip


DATA_COMMANDS.register("synth-mpii")(synth_mpii)
