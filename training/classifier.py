"""Transfer learning, the classic recipe, on a CPU and offline.

    python -m training.classifier --data fashion-mnist --per-class 100

1. Load a model pretrained on ImageNet, without its top.
2. Freeze it and train a new head on your (small) data set. With augmentation off the
   frozen backbone gives the same features every epoch, so they are computed once and the
   head trains on them: minutes become seconds.
3. Optionally (`--fine-tune-epochs`), unfreeze the top of the backbone and fine-tune at a
   low learning rate, BatchNorm kept in inference mode, stopping early when validation
   accuracy stops improving. On Fashion-MNIST it costs accuracy, so it is off by default
   (docs/classifier.md).
4. Check that the model has not collapsed onto one class (it warns, or with `--strict`
   stops), fit a temperature on held-out scores (training/calibration.py), export a
   SavedModel (raw image bytes in, labels and calibrated scores out), evaluate the export on
   the test split, then write its model card with the measurements.

`--backbone scratch` trains a small CNN from nothing on the same data instead: the
baseline that shows what the pretrained features are worth when data is scarce. When the
training classes are unbalanced, every phase weighs them (`--class-weight`), and every
report leads with balanced accuracy.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from training.classifier_config import L2_PER_IMAGE, MIN_VALIDATION_PER_CLASS, ClassifierConfig, parse_args
from training.cli import UserError, run_cli

if TYPE_CHECKING:
    from training.data import Dataset

# When nothing is held out, the collapse check classifies at most this many training images:
# on all 60k of Fashion-MNIST at 160 px the backbone would take 15 minutes more.
COLLAPSE_CHECK_IMAGES = 1000
COMPILE = dict(loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def log(message: str) -> None:
    print(f"[classifier] {message}", flush=True)


def train(config: ClassifierConfig) -> Path:
    """Run the whole recipe; return the exported model's folder."""
    import keras

    from training.calibration import fitted_temperature

    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    data = load_data(config)
    if config.backbone == "scratch":
        (model, best_validation_accuracy), head_l2, out_of_fold = train_scratch_cnn(config, data), None, None
    else:
        model, head_l2, best_validation_accuracy, out_of_fold = transfer_learn(config, data)
    training_seconds = time.monotonic() - started
    log(f"trained in {training_seconds:.0f} s")
    # The collapse check looks at the validation images, or (a sample of) the training images when none are held out.
    checked = predictions_on(model, config, data.validation if len(data.validation) else data.train.sample(
        COLLAPSE_CHECK_IMAGES, config.seed), data.labelled.class_names)
    metrics = validation_metrics(checked) if len(data.validation) else {}
    metrics.update(collapse_check(config, checked, best_validation_accuracy))
    training = {"config": asdict(config), "head_l2": head_l2, "class_weights": data.class_weights_by_name(),
                "wall_seconds": round(training_seconds, 1)}
    temperature = fitted_temperature(out_of_fold or checked, log) if config.calibrate else 1.0
    return export_and_evaluate(model, config, data, metrics, training, temperature)


@dataclass
class Splits:
    labelled: Dataset  # every labelled training image: the card counts them
    train: Dataset
    validation: Dataset  # held out for early stopping; empty when nothing stops early
    class_weights: dict[int, float] | None  # Keras' class_weight for every fit; None: unweighted

    def class_weights_by_name(self) -> dict[str, float] | None:
        if not self.class_weights:
            return None
        return {self.labelled.class_names[label]: round(weight, 4) for label, weight in self.class_weights.items()}


def load_data(config: ClassifierConfig) -> Splits:
    """The training split (a stratified, seeded subset with --per-class), less a validation part."""
    from training.class_balance import class_weights
    from training.data import load_dataset, train_validation_split, with_extra_images

    dataset = load_dataset(config.data, split="train", per_class=config.per_class, seed=config.seed,
                           image_size=config.image_size)
    if len(dataset.class_names) < 2:
        raise UserError(f"{config.data} has only one class ({dataset.class_names}); a classifier needs two or more")
    train_set, validation_set = train_validation_split(dataset, config.validation_fraction, seed=config.seed,
                                                       min_per_class=MIN_VALIDATION_PER_CLASS)
    if config.extra_data:
        train_set = with_extra_images(train_set, config.extra_data)
    log(f"data: {config.data}, {len(train_set)} training + {len(validation_set)} validation "
        f"images, {dataset.num_classes} classes, resized to {config.image_size} px")
    splits = Splits(dataset, train_set, validation_set,
                    class_weights(train_set.labels, dataset.num_classes, config.class_weight))
    if splits.class_weights:
        log(f"classes weighed in the loss (--class-weight balanced): {splits.class_weights_by_name()}")
    return splits


def pipeline(config: ClassifierConfig, subset, shuffle: bool = False, augment: bool = False):
    """Batches of `subset` at the model's size, RGB."""
    from training.data import make_pipeline

    return make_pipeline(subset, config.batch_size, image_size=config.image_size, channels=3,
                         shuffle=shuffle, augment=augment, seed=config.seed)


def train_scratch_cnn(config: ClassifierConfig, data: Splits):
    """The baseline: a small CNN trained from nothing on the same images. Returns it and its
    best validation accuracy."""
    import keras

    from training.classifier_fit import fit_until_validation_loss_stalls
    from training.classifier_model import build_scratch_cnn

    log("backbone: none — a small CNN trained from scratch (the baseline)")
    model = build_scratch_cnn(config.image_size, data.labelled.num_classes, config.seed)
    model.compile(keras.optimizers.Adam(config.learning_rate), **COMPILE)
    return model, fit_until_validation_loss_stalls(model, config, data, augment=config.augment)


def transfer_learn(config: ClassifierConfig, data: Splits):
    """The Keras guide's recipe: freeze a pretrained base, train a new head on its features,
    optionally fine-tune the top of the base. Returns the model, the head's weight decay, and
    phase 1's best validation accuracy when it stopped early (--augment), and, when nothing is held
    out to calibrate on, each training image's scores by heads that did not see it."""
    import keras

    from training.classifier_fit import (
        fine_tune,
        fit_until_validation_loss_stalls,
        out_of_fold_head_scores,
        train_head_on_features,
    )
    from training.classifier_model import build_head, stack_backbone_and_head

    extractor = frozen_feature_extractor(config)
    train_features = extract_features(extractor, pipeline(config, data.train), "features (train)")
    l2 = config.l2 if config.l2 is not None else L2_PER_IMAGE / len(data.train)
    log(f"head: dropout {config.dropout:g}, L2 {l2:.2g}")
    head = build_head(train_features.mean(axis=0), train_features.var(axis=0), data.labelled.num_classes,
                      config.dropout, l2)
    model = stack_backbone_and_head(extractor, head, config.image_size)
    model.compile(keras.optimizers.Adam(config.learning_rate), **COMPILE)
    best_validation_accuracy, out_of_fold = None, None
    if config.augment:
        log("phase 1: training the head on augmented images through the frozen backbone")
        best_validation_accuracy = fit_until_validation_loss_stalls(model, config, data, augment=True)
    else:
        train_head_on_features(head, train_features, data, config)
        if config.calibrate and not len(data.validation):
            out_of_fold = out_of_fold_head_scores(train_features, data, config, l2)
    if config.fine_tune_epochs > 0:
        fine_tune(model, extractor, config, data)
    return model, l2, best_validation_accuracy, out_of_fold


def frozen_feature_extractor(config: ClassifierConfig):
    """The pretrained backbone without its top, frozen, giving the features the head sees:
    pooled from several depths (--features multi), or its last layer's."""
    from training.backbones import BACKBONES, build_backbone
    from training.classifier_model import multi_level_features

    backbone = build_backbone(config.backbone, image_size=config.image_size, include_top=False)
    backbone.trainable = False
    layer_names = BACKBONES[config.backbone.partition("=")[0]].feature_layers
    if config.features == "multi" and layer_names:
        extractor = multi_level_features(backbone, layer_names, config.pooling)
        log(f"backbone: {config.backbone}, ImageNet weights, frozen; features {config.pooling}-pooled from "
            f"{len(layer_names)} depths ({', '.join(layer_names)}): {extractor.output_shape[-1]} per image")
        return extractor
    log(f"backbone: {config.backbone}, ImageNet weights, frozen; "
        f"{backbone.output_shape[-1]} features per image from its last layer")
    return backbone


def extract_features(backbone, dataset, description: str):
    """Run the frozen backbone once over a pipeline, with a progress bar."""
    import numpy as np
    import tensorflow as tf
    from tqdm import tqdm

    features_of = tf.function(lambda images: backbone(images, training=False))
    batches = [features_of(images).numpy()
               for images, _ in tqdm(dataset, desc=description, unit="batch", total=len(dataset))]
    return np.concatenate(batches)












def predictions_on(model, config: ClassifierConfig, subset: Dataset, class_names: list[str]):
    """How the Keras model in memory scores on `subset`: an `Evaluation`, as for the export."""
    from training.evaluate import Evaluation, confusion_matrix

    scores = model.predict(pipeline(config, subset), verbose=0)
    return Evaluation(class_names, confusion_matrix(subset.labels, scores.argmax(axis=1), len(class_names)),
                      scores, subset.labels)


def validation_metrics(evaluation) -> dict:
    """Balanced accuracy first, per-class recall and plain accuracy beside it."""
    recalls = ", ".join(f"{label} {recall:.2f}" for label, recall in zip(evaluation.labels, evaluation.recall))
    log(f"validation: balanced accuracy {evaluation.balanced_accuracy:.2%} (recall per class: {recalls}), "
        f"accuracy {evaluation.accuracy:.2%}")
    return {"validation_balanced_accuracy": round(evaluation.balanced_accuracy, 4),
            "validation_accuracy": round(evaluation.accuracy, 4)}


def collapse_check(config: ClassifierConfig, evaluation, best_validation_accuracy: float | None) -> dict:
    """{"collapsed": ..., and why}, from how the model scored (`evaluation`) and, when it
    stopped early, its best validation accuracy. A collapse is a warning in the log and the
    card; with --strict, an error, and nothing is exported."""
    from training.class_balance import collapse_reason

    reason = collapse_reason(evaluation, best_validation_accuracy)
    if reason is None:
        return {"collapsed": False}
    if config.strict:
        raise UserError(f"the model collapsed: {reason}; nothing exported (--strict). Try another --seed, "
                        "more --epochs or --warmup-epochs, or --class-weight balanced")
    log(f"WARNING: the model collapsed: {reason}. It is exported anyway, marked collapsed in its card "
        "(--strict makes this an error)")
    return {"collapsed": True, "collapse": reason}


def export_and_evaluate(model, config: ClassifierConfig, data: Splits, metrics: dict, training: dict,
                        temperature: float) -> Path:
    """Export into a staging version folder (scores calibrated by `temperature`), evaluate the
    export on the test split, and only then write the card, once, with every metric."""
    from contract.layout import new_version_folder
    from training.calibration import test_calibration_errors
    from training.export import calibration_images, export_classifier

    with new_version_folder(config.out, config.sign_key) as (folder, version):
        card = export_classifier(
            model, data.labelled.class_names, config.image_size, folder, version,
            calibration_images(data.train.images, data.train.labels, config.image_size), temperature,
            name=config.name, backbone=config.backbone, dataset=config.data,
            per_class_counts=data.labelled.per_class_counts(), training=training,
        )
        if config.evaluate:
            from training.evaluate import evaluate_and_report

            log("evaluating the exported model on the test split")
            evaluation = evaluate_and_report(folder, config.data, "test", limit=config.eval_limit, card=card)
            metrics = {**metrics, "test_balanced_accuracy": round(evaluation.balanced_accuracy, 4),
                       "test_accuracy": round(evaluation.accuracy, 4),
                       "test_recall": {label: round(float(recall), 4)
                                       for label, recall in zip(evaluation.labels, evaluation.recall)},
                       "test_examples": int(evaluation.confusion.sum())}
            if not metrics["collapsed"]:  # a collapse may show on the test split only
                metrics.update(collapse_check(config, evaluation, None))
            card = replace(card, **test_calibration_errors(evaluation, temperature, log))
        replace(card, metrics=metrics).write(folder)
    model_dir = Path(config.out) / str(version)
    log(f"exported {model_dir} (SavedModel + model_card.json)")
    return model_dir


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    model_dir = train(config)
    log(f"done: {model_dir}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
