"""How the classifier's networks are fitted: the head on precomputed features, a network
until its validation loss stalls, fine-tuning the top of the backbone, and the out-of-fold
heads that score every training image for calibration when nothing is held out. The recipe
that calls them, in order, is training/classifier.py."""

from __future__ import annotations

from training.classifier import COMPILE, Splits, log, pipeline
from training.classifier_config import ClassifierConfig

# fit_head_in_one_epoch's steps per call into the compiled graph: the Python around a step
# costs more than a head's step on a few thousand features.
STEPS_PER_EXECUTION = 100


def train_head_on_features(head, features, data: Splits, config: ClassifierConfig) -> None:
    """Phase 1 without augmentation: the frozen backbone gives the same features every
    epoch, so they were computed once and the head alone trains on them."""
    log("phase 1: augmentation is off, so the backbone's features are computed once "
        "and the head trains on them (seconds, not minutes)")
    # The head alone is a regularised softmax regression: train it to convergence, a fixed
    # number of steps with a learning rate decaying to zero, rather than stop it on a
    # validation loss that a hundred images make noisy (docs/classifier.md: early stopping
    # moved the test accuracy by up to 2 points from one seed to the next).
    fit_head(head, features, data.train.labels, data.class_weights, config)
    log(f"phase 1: head trained for {config.head_steps} steps, training accuracy "
        f"{head.history.history['accuracy'][-1]:.2%}")

def fit_head(head, features, labels, class_weights: dict[int, float] | None, config: ClassifierConfig) -> None:
    """--head-steps of Adam on `features`, the learning rate decaying to zero, as Keras epochs
    of shuffled `features`: the recipe the published accuracies were measured with."""
    compile_head(head, config)
    steps_per_epoch = -(-len(features) // config.batch_size)
    head.fit(features, labels, batch_size=config.batch_size, class_weight=class_weights,
             epochs=-(-config.head_steps // steps_per_epoch), shuffle=True, verbose=0)

def compile_head(head, config: ClassifierConfig, steps_per_execution: int = 1) -> None:
    """Adam, its learning rate decaying from --learning-rate to zero over --head-steps."""
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.head_steps)
    head.compile(keras.optimizers.Adam(schedule), steps_per_execution=steps_per_execution, **COMPILE)

def fit_head_in_one_epoch(head, features, labels, class_weights: dict[int, float] | None,
                          config: ClassifierConfig) -> None:
    """fit_head's steps, schedule and batches, as one Keras epoch over the repeated data, many
    steps per call: on few images fit_head is thousands of epochs of a few steps each, and
    out_of_fold_head_scores would pay their overhead --calibration-folds times (on the quick
    model, 5 heads cost 140 s of CPU that way, 55 s this way, for the same temperature)."""
    import tensorflow as tf

    compile_head(head, config, steps_per_execution=STEPS_PER_EXECUTION)
    batches = (tf.data.Dataset.from_tensor_slices((features, labels))
               .shuffle(len(features), seed=config.seed, reshuffle_each_iteration=True)
               .batch(config.batch_size).repeat())
    head.fit(batches, class_weight=class_weights, steps_per_epoch=config.head_steps, epochs=1, verbose=0)

def out_of_fold_head_scores(features, data: Splits, config: ClassifierConfig, l2: float):
    """The head's recipe again on --calibration-folds folds: every training image scored by a
    head that did not see it. The head is seconds to train; holding images out of it costs accuracy."""
    from training.calibration import HeldOut, out_of_fold_scores
    from training.classifier_model import build_head

    def fit_and_score(train, held):
        head = build_head(features[train].mean(axis=0), features[train].var(axis=0), data.labelled.num_classes,
                          config.dropout, l2)
        fit_head_in_one_epoch(head, features[train], data.train.labels[train], data.class_weights, config)
        return head.predict(features[held], verbose=0)

    log(f"calibration: nothing is held out, so {config.calibration_folds} heads score the images they did not see")
    labels = data.train.labels
    return HeldOut(out_of_fold_scores(fit_and_score, labels, config.calibration_folds, config.seed), labels)

def fit_until_validation_loss_stalls(model, config: ClassifierConfig, data: Splits, augment: bool) -> float:
    """At most --epochs on the training images, keeping the weights of the best validation
    loss after the warm-up; returns the best validation accuracy of any epoch."""
    import keras

    # Validation loss, not accuracy: with ~100 validation images accuracy moves in 1% steps
    # and plateaus at once, stopping the head long before it has converged. Not watched in
    # the first --warmup-epochs: a network trained from nothing often sits at the majority
    # class for a few epochs, and stopping (or keeping weights) there is a collapse.
    early_stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                               start_from_epoch=config.warmup_epochs, restore_best_weights=True)
    history = model.fit(pipeline(config, data.train, shuffle=True, augment=augment), epochs=config.epochs,
                        validation_data=pipeline(config, data.validation), class_weight=data.class_weights,
                        callbacks=[early_stop], verbose=2)
    return max(history.history["val_accuracy"])

def fine_tune(model, extractor, config: ClassifierConfig, data: Splits) -> None:
    """Phase 2: unfreeze the top of the backbone and train at a low learning rate; keep
    phase 1's weights unless validation accuracy improves."""
    import keras

    from training.classifier_model import unfreeze_top

    unfrozen = unfreeze_top(extractor, config.fine_tune_fraction)
    log(f"phase 2: fine-tuning the top {config.fine_tune_fraction:.0%} of the backbone "
        f"({unfrozen} layers, BatchNorm frozen) at learning rate {config.fine_tune_learning_rate:g}")
    model.compile(keras.optimizers.Adam(config.fine_tune_learning_rate), **COMPILE)
    baseline = model.evaluate(pipeline(config, data.validation), verbose=0, return_dict=True)["accuracy"]
    phase_1_weights = model.get_weights()
    fine_tune_stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=2, restore_best_weights=True)
    history = model.fit(pipeline(config, data.train, shuffle=True, augment=config.fine_tune_augment),
                        epochs=config.fine_tune_epochs, validation_data=pipeline(config, data.validation),
                        class_weight=data.class_weights, callbacks=[fine_tune_stop], verbose=2)
    best = max(history.history["val_accuracy"])
    if best > baseline:
        log(f"phase 2: validation accuracy {baseline:.2%} → {best:.2%}")
    else:
        model.set_weights(phase_1_weights)
        log(f"phase 2: validation accuracy {baseline:.2%} → {best:.2%}, no gain: keeping phase 1's weights")
