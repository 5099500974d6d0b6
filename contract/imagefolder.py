"""The image-folder layout of labelled images: `DIR/<class>/<file>`, one subfolder per class.

`training.data` reads it (`--data DIR`) and the bulk generator (`service.batch generate`)
writes it. A class name may hold characters a folder name cannot (Fashion-MNIST's
`T-shirt/top`): the folder is the name with those percent-encoded (`T-shirt%2Ftop`), and
`class_name` turns a folder back into the name, so both sides agree on the labels. Both
sides also take a file for an image by its extension (`IMAGE_EXTENSIONS`, what Pillow reads).
"""

from __future__ import annotations

from urllib.parse import quote, unquote

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

# Kept as they are: readable names stay readable ("Ankle boot"); "/" and "%" are encoded,
# and so is a leading "." (a hidden folder is not a class).
SAFE = " !#$&'()+,;=@[]^`{}~"


def class_folder(name: str) -> str:
    folder = quote(name, safe=SAFE)
    return "%2E" + folder[1:] if folder.startswith(".") else folder


def class_name(folder: str) -> str:
    return unquote(folder)
