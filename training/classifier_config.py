"""The classifier trainer's one config: every flag of `python -m training.classifier`.

The defaults are the recipe that reaches the published accuracy (docs/classifier.md);
--quick trades accuracy for a run of a minute or two (the demo and the tests).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from training.cli import (
    Profile,
    UserError,
    check_sign_key,
    config_parser,
    data_option,
    name_option,
    option,
    out_option,
    per_class_option,
    require_at_least_one,
    sign_key_option,
    with_profiles,
)

# The head's weight decay shrinks as the data grows (a prior counts for less against more
# evidence): 10 / N is the best of those screened at both ~1,000 and ~5,000 training images.
L2_PER_IMAGE = 10.0
VALIDATION_FRACTION = 0.1  # held out when something stops early
# ...but at least this many images of each class (half a class that has fewer than twice
# as many): a validation accuracy over three images moves in 33% steps.
MIN_VALIDATION_PER_CLASS = 5
TRANSFER_IMAGE_SIZE = 160
# The scratch CNN follows the data's own size up to this: two poolings leave 16x16x64
# values at 64 px (a 2M-weight dense layer); larger inputs only add weights to fit on
# little data (docs/classifier.md).
SCRATCH_MAX_IMAGE_SIZE = 64
MIN_IMAGE_SIZE = 16


@dataclass
class ClassifierConfig:
    data: str = data_option()
    per_class: int | None = per_class_option()
    backbone: str = option("efficientnet-lite0", "efficientnet-lite0, mobilenetv2, keras:<Application> "
                           "(e.g. keras:ResNet50), or scratch for the from-scratch CNN baseline")
    image_size: int | None = option(None, f"the model's input size in pixels (images are resized); default: "
                                    f"{TRANSFER_IMAGE_SIZE} for a backbone, for scratch the data's own size (28 for "
                                    f"the built-in sets, a folder's median side) up to {SCRATCH_MAX_IMAGE_SIZE}")
    features: str = option("multi", "multi: pool several depths of the backbone; last: its last layer only",
                           choices=["multi", "last"])
    pooling: str = option("max", "how --features multi reduces each depth's feature map to a vector",
                          choices=["max", "average"])
    head_steps: int = option(3000, "phase 1 training steps of the head on precomputed features "
                             "(augmentation off), learning rate decaying to zero")
    epochs: int = option(200, "epochs of the scratch CNN, or of phase 1 with --augment; early stopping "
                         "usually ends sooner")
    learning_rate: float = option(1e-3, "phase 1 learning rate (Adam)")
    dropout: float = option(0.5, "dropout before the softmax head")
    l2: float | None = option(None, f"L2 weight decay of the head (default: {L2_PER_IMAGE:g} / the number of "
                              "training images, e.g. 0.01 for 1,000)")
    batch_size: int = option(64, "batch size")
    fine_tune_epochs: int = option(0, "phase 2 epochs; 0 skips fine-tuning")
    fine_tune_fraction: float = option(0.3, "top share of the backbone's layers to unfreeze in phase 2")
    fine_tune_learning_rate: float = option(1e-4, "phase 2 learning rate")
    fine_tune_augment: bool = option(True, "random flips/shifts/zooms in phase 2: the head has already fit "
                                     "the plain images, so without them fine-tuning has little left to learn from")
    augment: bool = option(False, "random flips/shifts/zooms in phase 1 (then it runs through the backbone "
                           "every epoch)")
    validation_fraction: float | None = option(
        None, f"share of the training data held out for early stopping (default: {VALIDATION_FRACTION} when "
        "something stops early - the scratch CNN, --augment, phase 2 - else 0: the head trains a fixed number "
        "of steps on every labelled image)")
    patience: int = option(10, "early-stopping patience in epochs (scratch CNN, or phase 1 with --augment)")
    warmup_epochs: int = option(5, "epochs before early stopping starts watching (the first epochs of a "
                                "network trained from nothing often sit at the majority class)")
    class_weight: str | None = option(None, "balanced: weigh each class's loss by N / (classes x its images); "
                                      "none: no weights; default: balanced when the training classes differ "
                                      "by more than 1.5x", choices=["balanced", "none"])
    strict: bool = option(False, "exit with an error, exporting nothing, when the model collapses (answers "
                          "nearly one class, or never beats answering the largest one); else it is a warning")
    calibrate: bool = option(True, "fit a temperature on held-out scores and bake it into the export, so its "
                             "scores are calibrated probabilities (training/calibration.py)")
    calibration_folds: int = option(5, "when nothing is held out (the head on features), fit the head this many "
                                    "times more, each scoring the fold it did not see, to calibrate on")
    seed: int = option(0, "random seed for the subset, the split, and the weights")
    out: str = out_option("models/classifier")
    name: str = name_option("classifier")
    sign_key: str | None = sign_key_option()
    evaluate: bool = option(True, "evaluate the export on the test split")
    eval_limit: int | None = option(None, "evaluate on the first N test images only; default: all")
    extra_data: str | None = option(None, "a folder of more training images, e.g. a generated one (python -m "
                                          "service.batch generate): training split only, never validated or tested on")


PROFILES = [  # in this order: with both, --quick's values win
    Profile(when=("backbone", "scratch"), values=dict(epochs=30, learning_rate=1e-3, augment=False)),
    # 3 calibration folds, not 5: on the quick model the same test ECE (docs/classifier.md) for 3/5 of the heads.
    Profile(switch="quick", values=dict(per_class=100, image_size=96, eval_limit=2000, calibration_folds=3),
            help="the minute-long profile used by the demo and the tests"),
]


def parse_args(argv: list[str] | None = None) -> ClassifierConfig:
    parser = config_parser(
        ClassifierConfig, PROFILES, prog="python -m training.classifier",
        description="Transfer learning, the classic recipe, on a CPU and offline. Fine-tunes a pretrained "
                    "backbone on your images and exports a SavedModel with a model card.",
        recipe="Defaults are the published recipe (docs/classifier.md).",
    )
    config = with_profiles(ClassifierConfig, PROFILES, parser.parse_args(argv))
    if config.image_size is None:
        config = replace(config, image_size=default_image_size(config))
    if config.validation_fraction is None:
        config = replace(config, validation_fraction=VALIDATION_FRACTION if early_stops(config) else 0.0)
    validate(config)
    return config


def default_image_size(config: ClassifierConfig) -> int:
    """A backbone's input size; or, from scratch, the data's own size: a CNN trained from
    nothing gains no detail from upscaled 28-px images, and should not lose a photo's."""
    from training.data import native_side

    if config.backbone != "scratch":
        return TRANSFER_IMAGE_SIZE
    return min(max(native_side(config.data) or SCRATCH_MAX_IMAGE_SIZE, MIN_IMAGE_SIZE), SCRATCH_MAX_IMAGE_SIZE)


def early_stops(config: ClassifierConfig) -> bool:
    """Whether some part of the run stops on a validation set (the head on features does not)."""
    return config.backbone == "scratch" or config.augment or config.fine_tune_epochs > 0


def validate(config: ClassifierConfig) -> None:
    if config.per_class is not None and config.per_class < 2:
        raise UserError("--per-class must be at least 2 (one for training, one for validation)")
    if not 0.0 <= config.validation_fraction < 0.5:
        raise UserError("--validation-fraction must be at least 0 and below 0.5")
    if config.validation_fraction == 0 and early_stops(config):
        raise UserError("--validation-fraction 0 leaves nothing to stop early on: the scratch CNN, "
                        "--augment and --fine-tune-epochs need a validation set")
    if not 0.0 <= config.fine_tune_fraction <= 1.0:
        raise UserError("--fine-tune-fraction must be between 0 and 1")
    if config.image_size < MIN_IMAGE_SIZE:
        raise UserError(f"--image-size must be at least {MIN_IMAGE_SIZE} pixels")
    if config.warmup_epochs < 0:
        raise UserError("--warmup-epochs must be at least 0")
    require_at_least_one(config, ("epochs", "head_steps", "batch_size"))
    if config.calibration_folds < 2:
        raise UserError("--calibration-folds must be at least 2")
    check_sign_key(config.sign_key)
