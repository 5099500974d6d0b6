"""The classifier's networks: a head on a pretrained backbone, and a from-scratch baseline.

Kept apart from the training loop (as nanoGPT keeps model.py apart from train.py) so the
recipe in `training/classifier.py` reads as steps, and the shapes are defined once.
Every model here takes float32 RGB in 0–255, `[N, S, S, 3]`: the same input as the
backbones, so the export wraps any of them the same way.
"""

from __future__ import annotations

import keras
from keras import layers


def multi_level_features(backbone: keras.Model, layer_names: tuple[str, ...],
                         pooling: str = "max") -> keras.Model:
    """Pool several depths of the backbone and concatenate them into one feature vector.

    The last layer of an ImageNet network is tuned to ImageNet's classes; middle layers
    describe edges, textures and parts that carry over to a new domain (greyscale
    clothing, say). With few labelled images, giving the head all of them is worth more
    than two points of accuracy on Fashion-MNIST (docs/classifier.md).

    Max pooling ("is this pattern anywhere in the image?") beats averaging by another point
    or two there: a garment fills part of a black frame, and an average dilutes the
    response of a collar or a heel with all that background.
    """
    pool = {"max": layers.GlobalMaxPooling2D, "average": layers.GlobalAveragePooling2D}[pooling]
    pooled = [pool(name=f"pool_{name}")(backbone.get_layer(name).output) for name in layer_names]
    return keras.Model(backbone.input, layers.Concatenate(name="multi_level")(pooled),
                       name=f"{backbone.name}_multi_level")


def build_head(feature_mean, feature_variance, num_classes: int, dropout: float, l2: float) -> keras.Model:
    """The new top: standardise the features, dropout, one softmax layer.

    Features pooled from different depths differ in scale by orders of magnitude;
    standardising them (with the training set's statistics, frozen into the layer) lets
    one weight decay fit all of them.
    """
    features = keras.Input((len(feature_mean),), name="features")
    x = layers.Normalization(mean=feature_mean, variance=feature_variance, name="head_standardize")(features)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    scores = layers.Dense(num_classes, activation="softmax", name="head_softmax",
                          kernel_regularizer=keras.regularizers.l2(l2) if l2 else None)(x)
    return keras.Model(features, scores, name="head")


def stack_backbone_and_head(backbone: keras.Model, head: keras.Model, image_size: int) -> keras.Model:
    """Image → features → scores, with the backbone always in inference mode.

    `training=False` keeps BatchNorm on its ImageNet statistics even while the top of the
    backbone is being fine-tuned: batch statistics from a few small batches of a new domain
    wreck the features (DESIGN §6: 80% → 35%).
    """
    images = keras.Input((image_size, image_size, 3), name="images")
    features = backbone(images, training=False)
    return keras.Model(images, head(features), name="classifier")


def unfreeze_top(backbone: keras.Model, fraction: float) -> int:
    """Make the top `fraction` of the backbone's weighted layers trainable; return how many.

    BatchNorm layers stay frozen: in Keras 3 a non-trainable BatchNorm also runs in
    inference mode, which is what fine-tuning on a small data set needs.
    """
    weighted = [layer for layer in _leaf_layers(backbone) if layer.weights]
    first_trainable = int(round(len(weighted) * (1.0 - fraction)))
    backbone.trainable = True
    unfrozen = 0
    for index, layer in enumerate(weighted):
        layer.trainable = index >= first_trainable and not isinstance(layer, layers.BatchNormalization)
        unfrozen += layer.trainable
    return unfrozen


def _leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers in order, with nested models (a keras.applications base inside a wrapper) flattened."""
    leaves = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            leaves.extend(_leaf_layers(layer))
        else:
            leaves.append(layer)
    return leaves


def build_scratch_cnn(image_size: int, num_classes: int, seed: int) -> keras.Model:
    """A small CNN trained from nothing: the baseline transfer learning has to beat.

    Two conv blocks and a dense layer, the shape of the classic Fashion-MNIST tutorials;
    sized for 28–64 px inputs.
    """
    init = keras.initializers.GlorotUniform(seed=seed)
    images = keras.Input((image_size, image_size, 3), name="images")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(images)
    for index, filters in enumerate((32, 64)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=init,
                          name=f"conv{index + 1}a")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=init,
                          name=f"conv{index + 1}b")(x)
        x = layers.MaxPooling2D(name=f"pool{index + 1}")(x)
        x = layers.Dropout(0.25, seed=seed, name=f"dropout{index + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", kernel_initializer=init, name="dense")(x)
    x = layers.Dropout(0.5, seed=seed, name="dropout_dense")(x)
    scores = layers.Dense(num_classes, activation="softmax", kernel_initializer=init, name="scores")(x)
    return keras.Model(images, scores, name="scratch_cnn")
