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

import keras
import tensorflow as tf

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


def build_critic(name: str, model_config, rng: tf.random.Generator, backbone: str = "efficientnet-lite0",
                 backbone_size: int = 32) -> Critic:
    """The discriminator `name` for the generator `model_config` describes; `rng` draws its augmentations."""
    if name == "dcgan":
        from training.gan_model import build_discriminator

        return Critic(build_discriminator(model_config), non_saturating_losses, lambda images: images)
    if name == "projected":
        from training.diffaugment import diff_augment
        from training.gan_projected import ProjectedConfig, build_projected_discriminator, hinge_losses

        model = build_projected_discriminator(model_config.image_size, model_config.channels,
                                              model_config.num_classes,
                                              ProjectedConfig(backbone=backbone, input_size=backbone_size))
        return Critic(model, hinge_losses, lambda images: diff_augment(images, rng))
    raise ValueError(f"unknown discriminator {name!r}: choose one of {', '.join(DISCRIMINATORS)}")
