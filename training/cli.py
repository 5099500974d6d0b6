"""What every training command shares: a CLI built from one config, and clear errors.

A trainer's config is one dataclass (nanoGPT's one config object): each field is a flag,
declared with `option` (its default and help). `config_parser` builds the argparse CLI from
it, and `with_profiles` fills what the user did not give from the profiles that apply
(`--quick`, `--backbone scratch`), then from the defaults. A user mistake ends with one
`error: ...` line, not a traceback (`run_cli`). The commands that take an exported model
share `model_parser` and `resolve_model_dir`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.layout import version_dir

# TensorFlow's C++ start-up chatter (CUDA probing on a CPU machine, oneDNN notices) buries
# the progress bars; keep warnings and errors only. Set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras warns that fit() ignores shuffle=True for a tf.data pipeline: ours shuffle themselves.
warnings.filterwarnings("ignore", message="`shuffle=True` was passed")


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing data, unknown backbone): say what to do."""


def run_cli(main: Callable[[], None]) -> int:
    """Run `main`; report a UserError as `error: ...` with exit status 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


# --- the config and its flags ----------------------------------------------------------


def option(default: Any, help: str, choices: Sequence[str] | None = None) -> Any:
    """A config field that is also the flag `--field-name`. A default of None says "not set":
    then `help` must say what happens instead."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def flag(name: str) -> str:
    """The command-line spelling of a config field: per_class → --per-class."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Profile:
    """Values for the fields a user leaves out, when the profile applies: either a switch of
    its own (`switch="quick"` is `--quick`, with `help`) or a field's value
    (`when=("backbone", "scratch")`). Flags given explicitly always win."""

    values: dict[str, Any]
    switch: str | None = None
    help: str | None = None
    when: tuple[str, Any] | None = None

    @property
    def trigger(self) -> str:
        if self.switch:
            return flag(self.switch)
        name, value = self.when
        return f"{flag(name)} {value}"

    def applies(self, args: argparse.Namespace) -> bool:
        if self.switch:
            return getattr(args, self.switch)
        name, value = self.when
        return getattr(args, name) == value


def config_parser(config_type: type, profiles: Sequence[Profile] = (), *, prog: str, description: str,
                  recipe: str) -> argparse.ArgumentParser:
    """One flag per field of `config_type`, its default in the help; a switch per switched
    profile; an epilog that starts with `recipe` and says what each profile sets."""
    epilog = [recipe]
    if profiles:
        epilog.append("; ".join(f"{profile.trigger} sets {_as_flags(profile.values)}" for profile in profiles) + ".")
    epilog.append("Flags given explicitly always win.")
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=" ".join(epilog))
    hints = typing.get_type_hints(config_type)
    for field in dataclasses.fields(config_type):
        text = field.metadata["help"]
        if field.default is not None:
            text += f" (default: {field.default})"
        value_type = _without_none(hints[field.name])
        # default=None: "not given", so a profile or the field's default may fill it.
        if value_type is bool:
            parser.add_argument(flag(field.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag(field.name), type=value_type, choices=field.metadata["choices"],
                                default=None, help=text)
    for profile in profiles:
        if profile.switch:
            parser.add_argument(flag(profile.switch), action="store_true", help=profile.help)
    return parser


def given(config_type: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields the user set on the command line."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(config_type)
            if getattr(args, field.name) is not None}


def with_profiles(config_type: type, profiles: Sequence[Profile], args: argparse.Namespace):
    """The config: each field as given, else from the last profile that applies and sets
    it, else its default."""
    values = {}
    for profile in profiles:
        if profile.applies(args):
            values.update(profile.values)
    return config_type(**{**values, **given(config_type, args)})


def _as_flags(values: dict[str, Any]) -> str:
    """{"per_class": 100, "augment": False} → "--per-class=100 --no-augment"."""
    return " ".join(
        (flag(name) if value else flag("no_" + name)) if isinstance(value, bool) else f"{flag(name)}={value}"
        for name, value in values.items())


def require_at_least_one(config, names: Sequence[str]) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise UserError(f"{flag(name)} must be at least 1")


def _without_none(hint):
    """int | None → int: the type a flag's value is parsed as."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint


# --- flags both trainers have ------------------------------------------------------------


def data_option() -> Any:
    return option("fashion-mnist", "fashion-mnist, mnist, or a folder with one subfolder of images per class")


def per_class_option() -> Any:
    return option(None, "use N images per class (stratified, seeded); default: all")


def out_option(default: str) -> Any:
    return option(default, "export into OUT/<next version>/")


def name_option(default: str) -> Any:
    return option(default, "model name recorded in the card (and used by the service)")


def sign_key_option() -> Any:
    return option(None, "sign the export with this EC private key (PEM): model.sig in the version folder, "
                        "which a service with require_signed checks; default: unsigned")


def check_sign_key(path: str | None) -> None:
    """A signing key that would fail is said now, not after the training run."""
    from contract.signing import check_private_key

    if path:
        try:
            check_private_key(path)
        except ValueError as error:
            raise UserError(f"--sign-key {error}") from None


# --- commands on an exported model --------------------------------------------------------


def model_parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    """A parser whose first argument is an exported model (`resolve_model_dir` finds it)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model", help=f"a version folder ({example}) or its parent (latest version)")
    return parser


def resolve_model_dir(path: str) -> Path:
    """Accept a version folder or its parent (then the latest version is used)."""
    try:
        return version_dir(path)
    except FileNotFoundError:
        raise UserError(f"no exported model at {path}: expected a folder holding saved_model.pb, "
                        "or one with numbered version folders (train one with python -m training.classifier)") from None
