"""The segmentation plugin's commands: ``dnas segment`` (one image's class map, drawn and
counted) and ``dnas data synth-seg`` (the built-in synthetic set, cached by manifest)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch

from dnas.cli import SIZE, example, guard_output, guard_picture, out_opt, warn_if_truncated
from dnas.errors import DnasError
from dnas.files import check_writable
from dnas.registry import COMMANDS, DATA_COMMANDS
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


def class_names_of(info: dict | None, outputs: int, path: Path) -> list[str]:
    """The class names the weights record (background first), else ``class 0``, ``class 1``..."""
    names = ((info or {}).get("outputs") or {}).get("class_names")
    if names is None:
        return [f"class {i}" for i in range(outputs)]
    if len(names) != outputs:
        raise DnasError(f"{path}: the weights record {len(names)} class names but their head "
                        f"gives {outputs} outputs")  # fmt: skip
    return [str(name) for name in names]


def png_path(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A class map must be lossless: a JPEG would blur the class ids at every edge."""
    if value is not None and value.suffix.lower() != ".png":
        raise click.BadParameter(f"expected a .png path (class ids must stay exact), got "
                                 f"'{value}'")  # fmt: skip
    return value


@click.command(
    "segment",
    epilog=example(
        "dnas segment photo.jpg --weights runs/seg/train -o photo_seg.png",
        "dnas segment photo.jpg --weights seg.pt --arch runs/seg/arch.yaml --mask classes.png",
    ),
)
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--weights", type=click.Path(path_type=Path), required=True,
              help="Segmentation weights file or train run directory (its model.pt).")  # fmt: skip
@click.option("--arch", help="Architecture YAML or shipped name (default: the weights' own).")
@click.option("--input-size", type=SIZE, help="HxW the image is letterboxed into (default: "
              "the weights' training size; another size keeps the net's stride, with a "
              "warning).")  # fmt: skip
@out_opt("output", file=True, required=False, help="Picture to write: the image beside its "
         "classes (default: IMAGE's name + _seg.png, here).")  # fmt: skip
@click.option("--mask", type=click.Path(dir_okay=False, path_type=Path), callback=png_path,
              help="Also write the class map: a PNG of class ids (0 = background) at the "
              "image's size.")  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite --out and --mask.")
def segment(image: Path, weights: Path, arch: str | None, input_size: tuple[int, int] | None,
            output: Path | None, mask: Path | None, force: bool) -> None:  # fmt: skip
    """Segment IMAGE as evaluation does (letterboxed into the input size), the class map
    brought back to the image's size: writes a picture, prints each class's share as JSON."""
    from dnas.nn.network import Network
    from dnas.nn.weights import head_outputs_of, load_weights, resize_warning, resolve, weights_file
    from dnas.task import check_weights_task
    from dnas.vis.images import legend, panels, read_rgb, write_png
    from tasks.segmentation.draw import overlay, palette
    from tasks.segmentation.task import upsample
    from tasks.segmentation.transforms import letterbox_image, to_input, unletterbox_classes

    output = output or Path(f"{image.stem}_seg.png")
    if mask is not None and mask.resolve() == output.resolve():
        raise click.BadParameter(f"'{mask}' is the picture's file too (-o); give the class map "
                                 "a name of its own", param_hint="'--mask'")  # fmt: skip
    guard_picture(output, force, "out.png")
    if mask is not None:
        guard_output(mask, force, "--mask")
    weights = weights_file(weights)
    space, size, info = resolve(weights, arch, input_size, resizable=True)
    check_weights_task(info, weights, "segmentation", "dnas segment draws class maps")
    outputs = head_outputs_of(weights)
    names = class_names_of(info, outputs, weights)
    warning = resize_warning(space, info, weights, size, outputs)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    net = Network(space, outputs)
    load_weights(net, weights)
    net.eval()
    warn_if_truncated(image, "segmented")
    picture = read_rgb(image, allow_truncated=True)  # warned about above
    canvas, scale = letterbox_image(picture, size)
    with torch.no_grad():
        logits = upsample(net(to_input(canvas)[None]).float(), size)[0]
    classes = unletterbox_classes(logits, picture.shape[:2], scale).numpy().astype(np.uint8)
    colours = palette(outputs)
    found = np.bincount(classes.ravel(), minlength=outputs)
    shown = [(names[c], colours[c]) for c in range(1, outputs) if found[c]]
    title = "prediction" if shown else "prediction: background only"
    drawing = panels([picture, overlay(picture, classes, colours)], ["image", title])
    if shown:
        drawing = np.concatenate([drawing, legend(shown, drawing.shape[1])], axis=0)
    write_png(output, drawing)
    if mask is not None:
        write_png(mask, classes)  # one channel: each pixel its class id
    share = [{"id": c, "name": names[c], "percent": round(100 * float(found[c]) / classes.size, 2)}
             for c in range(outputs) if found[c]]  # fmt: skip
    click.echo(json.dumps({"image": str(image), "output": str(output),
                           "mask": str(mask) if mask else None, "input_size": list(size),
                           "classes": share}))  # fmt: skip


COMMANDS.register("segment")(segment)
