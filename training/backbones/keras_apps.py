"""``keras:<Name>`` backbones: the models of ``keras.applications``.

Their ImageNet weights are downloaded on first use (then cached under ``~/.keras``),
so they need internet once, or a weights file given by the user. Each application
expects its own input scaling (caffe-style BGR mean subtraction for VGG and ResNet,
[-1, 1] for MobileNetV2, ...); :class:`ApplicationPreprocessing` runs that
application's ``preprocess_input`` inside the graph, so every backbone takes the same
0-255 RGB input.
"""

from __future__ import annotations

from pathlib import Path

import keras

from training.backbones.errors import BackboneError

# The applications offered, with (default input size, minimum input size).
KERAS_APPLICATIONS = {
    "VGG16": (224, 32),
    "VGG19": (224, 32),
    "ResNet50": (224, 32),
    "ResNet101": (224, 32),
    "ResNet50V2": (224, 32),
    "MobileNet": (224, 32),
    "MobileNetV2": (224, 32),
    "MobileNetV3Small": (224, 32),
    "MobileNetV3Large": (224, 32),
    "DenseNet121": (224, 32),
    "EfficientNetB0": (224, 32),
    "EfficientNetV2B0": (224, 32),
    "ConvNeXtTiny": (224, 32),
    "InceptionV3": (299, 75),
    "Xception": (299, 71),
}


def preprocess_function(application: str):
    """The ``preprocess_input`` of the module that defines ``application``."""
    module_name = getattr(keras.applications, application).__module__.rsplit(".", 1)[-1]
    return getattr(keras.applications, module_name).preprocess_input


@keras.saving.register_keras_serializable(package="diptych")
class ApplicationPreprocessing(keras.layers.Layer):
    """Maps 0-255 RGB pixels to what ``keras.applications.<application>`` expects."""

    def __init__(self, application: str, **kwargs):
        super().__init__(**kwargs)
        self.application = application
        self.preprocess = preprocess_function(application)

    def call(self, images):
        return self.preprocess(images)

    def get_config(self):
        return {**super().get_config(), "application": self.application}


def build_keras_application(application: str, image_size: int, include_top: bool,
                            weights: str | Path | None) -> keras.Model:
    """``keras.applications.<application>`` behind its preprocessing, pooled when topless.

    ``weights`` is "imagenet" (downloads once), a local ``.h5``/``.weights.h5`` file
    matching ``include_top``, or None (random initialisation).
    """
    if weights not in ("imagenet", None) and not Path(weights).is_file():
        raise BackboneError(f"weights file not found: {weights}")
    images = keras.Input((image_size, image_size, 3), name="images")
    preprocessed = ApplicationPreprocessing(application, name="preprocess")(images)
    try:
        base = getattr(keras.applications, application)(
            include_top=include_top, weights=None if weights is None else str(weights),
            input_tensor=preprocessed, pooling=None if include_top else "avg")
    except Exception as error:  # keras raises bare Exception for a failed download
        if weights == "imagenet" and "fetch failure" in str(error):
            raise BackboneError(
                f"cannot download the ImageNet weights of keras:{application} (no internet?). "
                "Use the backbone efficientnet-lite0 or mobilenetv2, whose weights come "
                f"with the installed packages, or pass a local weights file: "
                f"keras:{application}=/path/to/weights.h5") from None
        raise BackboneError(f"cannot build keras:{application}: {error}") from error
    return keras.Model(images, base.output, name=f"keras_{application.lower()}")
