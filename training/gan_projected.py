"""A projected discriminator (Sauer et al. 2021, "Projected GANs Converge Faster").

The discriminator judges images through a frozen pretrained feature network instead of
learning its own features from scratch: a GAN's discriminator spends most of its early
training learning what edges and textures are, which ImageNet features already know.

    image [-1, 1] ─ DiffAugment ─ to RGB 0–255, resized ─ frozen backbone (4 depths)
      ─ fixed random 1×1 mixing per depth (CCM) ─ fixed random top-down mixing (CSM)
      ─ one small trained head per depth, told the class by projection ─ realness maps

- **Backbone**: `training.backbones` (EfficientNet-Lite0 by default, as in the paper),
  truncated after its last wanted stage; its BatchNorm runs in inference mode and none of
  its weights train (`backbone.trainable = False`).
- **CCM / CSM**: random 1×1 convolutions that mix channels, and an upsample-and-add path
  from the deepest depth to the shallowest that mixes scales, both fixed at their random
  initialisation: they spread each feature over all channels the heads see, so no head can
  win by watching a few of them (the paper's ablation: the largest single gain).
- **Heads**: strided 4×4 convolutions down to 4×4 or less, spectral-normalised, then a
  1×1 convolution to a class-map of `CMAP_DIM` channels; the logit at each position is
  its inner product with a learned embedding of the requested class (the paper's
  conditional variant, a projection discriminator per head). The output is every head's
  logits, concatenated: `[N, positions]`, trained with the hinge loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf
from keras import layers

from training.backbones import build_backbone

# EfficientNet-Lite0's stages the paper's reference design reads (after strides 4, 8, 16, 32):
# the ends of its 2nd, 3rd, 5th and 7th stages.
FEATURE_LAYERS = {
    "efficientnet-lite0": ("block03_add", "block05_add", "block11_add", "block16_project_bn"),
    "mobilenetv2": ("block03_add", "block06_add", "block13_add", "block17_project_bn"),
}
CCM_CHANNELS = (32, 64, 128, 256)  # the paper's 64…512, halved for two CPU cores
CMAP_DIM = 64  # channels of each head's class map
HEAD_SMALLEST_MAP = 4  # heads stride down to this side or less


@dataclass(frozen=True)
class ProjectedConfig:
    backbone: str = "efficientnet-lite0"
    input_size: int = 32  # the side the backbone sees (its minimum; docs/gan.md measures 64)
    depths: int = 4  # how many of FEATURE_LAYERS to read, shallowest first


MAX_BACKBONE_SIZE = 512  # past it one step of a batch of 64 would take minutes and gigabytes on a CPU


def check_projected(backbone: str, input_size: int, depths: int = 4) -> None:
    """Refuse, before any weights load, a backbone whose stages are not known, too small an input
    or a number of depths it does not have."""
    from training.backbones import BACKBONES

    name = backbone.partition("=")[0]
    if name not in FEATURE_LAYERS:
        raise ValueError(f"the projected discriminator reads the stages of {' or '.join(FEATURE_LAYERS)}, "
                         f"not {name!r}")
    if not BACKBONES[name].min_size <= input_size <= MAX_BACKBONE_SIZE:
        raise ValueError(f"{name} reads images of {BACKBONES[name].min_size} to {MAX_BACKBONE_SIZE} px "
                         f"(--backbone-size), got {input_size}")
    if not 1 <= depths <= len(FEATURE_LAYERS[name]):
        raise ValueError(f"{name} has {len(FEATURE_LAYERS[name])} depths to read: choose 1 to "
                         f"{len(FEATURE_LAYERS[name])}, got {depths}")


def build_feature_network(config: ProjectedConfig) -> keras.Model:
    """The frozen backbone, cut after its deepest wanted layer: RGB 0–255 → a list of maps."""
    check_projected(config.backbone, config.input_size, config.depths)
    name = config.backbone.partition("=")[0]
    backbone = build_backbone(config.backbone, image_size=config.input_size)
    outputs = [backbone.get_layer(layer).output for layer in FEATURE_LAYERS[name][:config.depths]]
    features = keras.Model(backbone.input, outputs, name="frozen_features")
    features.trainable = False  # also puts its BatchNorm in inference mode (DESIGN §6)
    return features


class RandomProjection(layers.Layer):
    """CCM + CSM: fixed random mixing across channels, then across scales (top-down)."""

    def __init__(self, channels: tuple[int, ...], seed: int = 0, **kwargs):
        super().__init__(trainable=False, **kwargs)
        def fixed(channels: int, name: str, offset: int):
            # Seeded initialisers: the same draw in every process, so a rebuilt discriminator
            # has the mixing the trained heads were trained on (and a checkpoint restores it too).
            return layers.Conv2D(channels, 1, kernel_initializer=keras.initializers.HeNormal(seed=seed + offset),
                                 name=name, trainable=False)

        self.mix_channels = [fixed(c, f"ccm{i}", i) for i, c in enumerate(channels)]
        # Each shallower depth gets the deeper, mixed map upsampled, projected to its channels, added.
        self.mix_scales = [fixed(c, f"csm{i}", 100 + i) for i, c in enumerate(channels[:-1])]

    def call(self, maps):
        mixed = [mix(x) for mix, x in zip(self.mix_channels, maps)]
        for index in range(len(mixed) - 2, -1, -1):
            deeper = mixed[index + 1]
            size = tf.shape(mixed[index])[1:3]
            mixed[index] = mixed[index] + self.mix_scales[index](tf.image.resize(deeper, size, "bilinear"))
        return mixed


def head(features, class_ids, num_classes: int, index: int):
    """One small discriminator on one depth's mixed map → class-projected logits [N, positions]."""
    x, side, width = features, features.shape[1], features.shape[-1]
    stage = 0
    while side > HEAD_SMALLEST_MAP:
        stage += 1
        width = min(width * 2, 256)
        x = layers.SpectralNormalization(layers.Conv2D(width, 4, strides=2, padding="same", use_bias=False),
                                         name=f"head{index}_down{stage}")(x)
        x = layers.LeakyReLU(0.2, name=f"head{index}_down{stage}_lrelu")(x)
        side = (side + 1) // 2
    class_map = layers.SpectralNormalization(layers.Conv2D(CMAP_DIM, 1), name=f"head{index}_cmap")(x)
    embedding = layers.Embedding(num_classes, CMAP_DIM, name=f"head{index}_class")(class_ids)
    logits = layers.Lambda(
        lambda pair: tf.reduce_sum(pair[0] * pair[1][:, tf.newaxis, tf.newaxis, :], axis=-1) / CMAP_DIM**0.5,
        name=f"head{index}_projection")([class_map, embedding])
    return layers.Flatten(name=f"head{index}_logits")(logits)


def build_projected_discriminator(image_size: int, channels: int, num_classes: int,
                                  config: ProjectedConfig = ProjectedConfig()) -> keras.Model:
    """(images float32 [N, S, S, C] in [-1, 1], class_ids int32 [N]) → realness logits [N, positions].

    DiffAugment happens before this model (in the training step), on the generator's scale.
    """
    images = keras.Input((image_size, image_size, channels), name="images")
    class_ids = keras.Input((), dtype="int32", name="class_ids")
    rgb = layers.Lambda(lambda x: tf.image.resize(tf.tile(x, [1, 1, 1, 3 // channels]) if channels == 1 else x,
                                                  [config.input_size, config.input_size], "bilinear"),
                        name="to_backbone_size")(images)
    pixels = layers.Rescaling(127.5, offset=127.5, name="to_0_255")(rgb)
    maps = build_feature_network(config)(pixels)
    mixed = RandomProjection(CCM_CHANNELS[:config.depths], name="random_projection")(maps)
    logits = [head(x, class_ids, num_classes, index) for index, x in enumerate(mixed)]
    output = logits[0] if len(logits) == 1 else layers.Concatenate(name="logits")(logits)
    return keras.Model([images, class_ids], output, name="projected_discriminator")


def hinge_losses(real_scores, fake_scores):
    """(discriminator loss, generator loss) of the hinge loss, over every head's logits."""
    discriminator_loss = tf.reduce_mean(tf.nn.relu(1.0 - real_scores)) + tf.reduce_mean(tf.nn.relu(1.0 + fake_scores))
    return discriminator_loss, -tf.reduce_mean(fake_scores)
