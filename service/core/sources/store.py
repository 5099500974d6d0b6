"""The BentoML model store as a source: every tag `training.publish` made (`name:version`,
the card's number as the tag's version). Its copies are local already: fetching is looking
the tag up."""

from __future__ import annotations

from pathlib import Path

from contract.layout import SAVED_MODEL, is_version_name

from .base import Release, Version, nothing_to_release


class StoreSource:
    def models(self) -> dict[str, list[Version]]:
        import bentoml

        found: dict[str, list[Version]] = {}
        for model in bentoml.models.list():
            if not (Path(model.path) / SAVED_MODEL).is_file() or not is_version_name(model.tag.version):
                continue  # not a diptych export (training.publish tags versions with the card's number)
            found.setdefault(model.tag.name, []).append(
                Version(model.tag.name, int(model.tag.version), str(model.tag), model.info.labels.get("kind")))
        return {name: sorted(versions, key=lambda version: version.number) for name, versions in found.items()}

    @staticmethod
    def fetch(version: Version) -> tuple[Path, Release]:
        import bentoml

        return Path(bentoml.models.get(version.ref).path), nothing_to_release
