"""The DCGAN trainer's one config: every flag of `python -m training.gan`, and `--resume`.

The defaults are the full recipe (docs/gan.md): ~15 CPU-minutes on Fashion-MNIST. Small
networks and small batches: on a CPU, more updates beat wider layers (docs/gan.md has the
measurements). --quick is the same recipe cut to 2 epochs for the demo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from training.cli import (
    Profile,
    UserError,
    check_sign_key,
    config_parser,
    data_option,
    flag,
    given,
    name_option,
    option,
    out_option,
    per_class_option,
    require_at_least_one,
    sign_key_option,
    with_profiles,
)

FOLDER_IMAGE_SIZE = 32  # image folders are generated at 32 px unless --image-size says otherwise
# --resume continues a run as it was started: only these flags may change.
RESUMABLE = ("epochs", "out", "name", "sign_key", "run_dir", "evaluate")


@dataclass
class TrainConfig:
    data: str = data_option()
    per_class: int | None = per_class_option()
    image_size: int | None = option(None, "generate images of this side, e.g. 28, 32 or 64; default: 28 for "
                                    f"the built-in sets, {FOLDER_IMAGE_SIZE} for folders")
    conditional: bool = option(True, "condition both networks on the class")
    epochs: int = option(10, "passes over the training images (the total, also with --resume)")
    batch_size: int = option(16, "images per step")
    latent_dim: int = option(64, "size of the generator's random input")
    filters: int = option(32, "width of the networks (the last hidden map of the generator)")
    learning_rate: float = option(5e-4, "Adam learning rate of both networks until the decay (beta_1 = 0.5)")
    lr_decay: float = option(0.5, "fraction of the run, at its end, over which both learning rates fall "
                             "linearly to 0 (0 keeps them constant); the schedule runs over the steps of "
                             "--epochs, so --resume --epochs N follows the N-epoch schedule from where the "
                             "run stands")
    discriminator: str = option("dcgan", "dcgan: a small CNN learned from scratch; projected: frozen pretrained "
                                "features with one small head per depth (docs/gan.md)",
                                choices=("dcgan", "projected"))
    backbone: str = option("efficientnet-lite0", "with --discriminator projected: the frozen feature network "
                           "(efficientnet-lite0 or mobilenetv2)")
    backbone_size: int = option(32, "with --discriminator projected: the side the images are resized to "
                                "for the backbone")
    projected_depths: int = option(4, "with --discriminator projected: how many of the backbone's four depths "
                                   "(strides 4, 8, 16, 32) get a head, shallowest first; fewer is cheaper "
                                   "(docs/gan.md)")
    fid_every: int = option(0, "measure a quick FID (2,000 test images) every N steps, for the FID-vs-CPU "
                            "curve in history.json and the card (0: never)")
    ema: float = option(0.998, "decay of the exported moving average of the generator's weights "
                        "(0 exports the last weights)")
    seed: int = option(0, "random seed for the subset, the weights, the latents and the shuffling")
    out: str = out_option("models/generator")
    name: str = name_option("generator")
    sign_key: str | None = sign_key_option()
    run_dir: str = option("runs/gan", "checkpoints, per-epoch sample grids, history and curves; a new run "
                          "clears it")
    evaluate: bool = option(True, "measure FID and class consistency at the end")


PROFILES = [Profile(switch="quick", values=dict(epochs=2), help="the demo profile: a few minutes on a laptop CPU")]


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """The run's config and whether to resume; --resume reads the rest from the run folder."""
    parser = config_parser(
        TrainConfig, PROFILES, prog="python -m training.gan",
        description="A class-conditional DCGAN, trained on a CPU in minutes. Exports the generator as a "
                    "SavedModel with a model card.",
        recipe="Defaults are the full recipe (docs/gan.md).",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    args = parser.parse_args(argv)
    if args.resume:
        config = resumed_config(Path(args.run_dir or TrainConfig.run_dir), given(TrainConfig, args), args.quick)
    else:
        config = with_profiles(TrainConfig, PROFILES, args)
    validate(config)
    return config, args.resume


PROJECTED_ONLY = ("backbone", "backbone_size", "projected_depths")


def resumed_config(run_dir: Path, given_values: dict, quick: bool) -> TrainConfig:
    """The saved run's config, with the few flags a resumed run may change."""
    saved_path = run_dir / "config.json"
    if not saved_path.exists():
        raise UserError(f"nothing to resume in {run_dir}: no config.json there (start a run without --resume)")
    # a run saved before a flag existed ran with its default
    saved = {field.name: field.default for field in fields(TrainConfig)} | json.loads(saved_path.read_text())
    changed = sorted(key for key, value in given_values.items() if key not in RESUMABLE and value != saved[key])
    if changed or quick:
        raise UserError(f"{', '.join(map(flag, changed)) or '--quick'} cannot change when resuming {run_dir}; "
                        f"only {', '.join(map(flag, RESUMABLE))} can")
    values = {**saved, **given_values}
    done = len(json.loads((run_dir / "history.json").read_text())["epochs"])
    if values["epochs"] <= done:
        raise UserError(f"{run_dir} has already trained {done} epochs: pass --epochs N with N > {done} to continue")
    return TrainConfig(**{field.name: values.get(field.name, field.default) for field in fields(TrainConfig)})


def validate(config: TrainConfig) -> None:
    if config.per_class is not None and config.per_class < 1:
        raise UserError("--per-class must be at least 1")
    require_at_least_one(config, ("epochs", "batch_size", "latent_dim", "filters"))
    if config.fid_every < 0:
        raise UserError("--fid-every must be 0 (never) or a number of steps")
    projected_only = [field.name for field in fields(TrainConfig) if field.name in PROJECTED_ONLY
                      and getattr(config, field.name) != field.default]
    if config.discriminator != "projected" and projected_only:
        raise UserError(f"{', '.join(map(flag, projected_only))} only apply with --discriminator projected")
    if config.discriminator == "projected":
        from training.gan_projected import check_projected

        try:
            check_projected(config.backbone, config.backbone_size, config.projected_depths)
        except ValueError as error:
            raise UserError(f"--discriminator projected: {error}") from None
    check_sign_key(config.sign_key)
    if not 0.0 <= config.ema < 1.0:
        raise UserError("--ema must be in [0, 1)")
    if config.learning_rate <= 0:
        raise UserError("--learning-rate must be positive")
    if not 0.0 <= config.lr_decay <= 1.0:
        raise UserError("--lr-decay must be in [0, 1]")
    if config.image_size is not None:
        from training.gan_model import GANConfig

        try:
            GANConfig(image_size=config.image_size).check()
        except ValueError as error:
            raise UserError(f"--image-size: {error}") from None
