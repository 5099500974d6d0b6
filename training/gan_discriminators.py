"""The discriminators `python -m training.gan --discriminator` chooses from, with the loss and
augmentation each one trains with.

- `dcgan`: the small convolutional discriminator of training/gan_model.py, learned from
  scratch, non-saturating loss, no augmentation.
- `projected`: the projected discriminator of training/gan_projected.py (frozen pretrained
  features, fixed random mixing, one head per depth), hinge loss and DiffAugment on real and
  generated images alike, as the Projected GAN paper trains it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

if TYPE_CHECKING:
    from training.gan_projected import ProjectedConfig

DISCRIMINATORS = ("dcgan", "projected")


@dataclass
class Critic:
    model: keras.Model  # (images [-1, 1], class_ids) -> realness logits
    losses: Callable  # (real_scores, fake_scores) -> (discriminator loss, generator loss)
    augment: Callable  # images -> images, applied to real and generated images before the model


def non_saturating_losses(real_scores, fake_scores):
    """The DCGAN's loss: log-sigmoid, written with softplus for stability."""
    discriminator_loss = tf.reduce_mean(tf.nn.softplus(-real_scores) + tf.nn.softplus(fake_scores))
    return discriminator_loss, tf.reduce_mean(tf.nn.softplus(-fake_scores))


def projected_settings(config) -> ProjectedConfig:
    """The projected discriminator's settings from a run's TrainConfig (training/gan_config.py)."""
    from training.gan_projected import ProjectedConfig

    return ProjectedConfig(backbone=config.backbone, input_size=config.backbone_size, depths=config.projected_depths)


def build_critic(name: str, model_config, rng: tf.random.Generator, projected=None) -> Critic:
    """The discriminator `name` for the generator `model_config` describes; `rng` draws its augmentations;
    `projected`, a ProjectedConfig, sets up the projected one (its defaults if None)."""
    if name == "dcgan":
        from training.gan_model import build_discriminator

        return Critic(build_discriminator(model_config), non_saturating_losses, lambda images: images)
    if name == "projected":
        from training.diffaugment import diff_augment
        from training.gan_projected import ProjectedConfig, build_projected_discriminator, hinge_losses

        model = build_projected_discriminator(model_config.image_size, model_config.channels,
                                              model_config.num_classes, projected or ProjectedConfig())
        return Critic(model, hinge_losses, lambda images: diff_augment(images, rng))
    raise ValueError(f"unknown discriminator {name!r}: choose one of {', '.join(DISCRIMINATORS)}")
