"""Local paths in published text: only Hub ids are named in full, every local file or folder by its last part.

A model card, run record, calibration or results file goes to the Hub; the paths a run was given (``--data_dir
/home/alice/photos``, ``--output_dir ../runs/x``) would show the training machine's folders and user names.
:class:`LocalPaths` knows a run's paths from its record, typed and resolved, and cuts each to its last part;
:func:`without_machine_paths` cuts any other absolute or home path. What is a Hub id follows huggingface_hub's
own rules (:func:`is_hub_repo_id`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

from huggingface_hub.utils import HFValidationError, validate_repo_id

from hf_model.config import PATH_FIELDS

# An absolute or home path inside a text: a word (after a space, '=', a quote or '(') that starts at a root
# ('/', '~/', 'C:\\', '\\\\server'); relative paths and URLs ('https://...') do not match
MACHINE_PATH = re.compile(r"""(?<![^\s='"(])(?:~[^\s'"/\\]*|[A-Za-z]:)?[/\\]+[^\s'"/\\][^\s'"]*""")
PATH_FLAGS = (*PATH_FIELDS, "output_dir")  # the flags whose values are local files or folders
HUB_OR_LOCAL_FLAGS = ("dataset", "backbone")  # those of them that may name a Hub repo instead
# Where a path a run names may start and end inside a text: after a space, '=', a quote, a bracket or ','; before
# a space, a quote, a bracket, ',', ';', ':', a '/' going on into the folder, or a '.' that ends a sentence
PATH_START = r"""(?<![^\s='"`(\[,;])"""
PATH_END = r"""(?=$|[\s'"`)\],;:/\\]|\.(?:\s|$))"""
PLACEHOLDER = re.compile(r"\x00(\d+)\x00")  # a cut path inside a command while it is split into words


def is_hub_repo_id(name: str, check_local: bool = True) -> bool:
    """Whether ``name`` names a Hub repo (``user/name``, or a canonical ``name``) rather than a local path.

    A Hub id passes ``huggingface_hub.utils.validate_repo_id`` (at most one ``/``; letters, digits, ``-_.``;
    no ``..`` or ``--``), which refuses every path-like name: absolute (POSIX or Windows), ``./``, ``../``,
    ``~``, backslashes, more than one ``/``. With ``check_local``, a name that exists on this machine is a
    local folder too, as ``datasets.load_dataset`` and ``from_pretrained`` read it. A run record stores such
    a folder as its absolute path (``RunRecord.to_dict``), so it reads as local wherever and whenever the
    card is written.
    """
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return not (check_local and Path(name).exists())


def path_name(path: str) -> str:
    """The last part of a POSIX or Windows path (``/home/alice/photos/bedrooms/`` -> ``bedrooms``)."""
    return (PureWindowsPath(path) if "\\" in path else PurePosixPath(path)).name or path


def without_machine_paths(text: str) -> str:
    """``text`` with every absolute or home path in it cut to its last part (a home path names the user).

    ``--data_dir /home/alice/photos/bedrooms`` becomes ``--data_dir bedrooms``; relative paths
    (``../data/bedrooms``) and URLs are kept. A path with spaces is cut as far as its first space: this is the
    fallback of :class:`LocalPaths`, which cuts the paths a run names whole.
    """
    return MACHINE_PATH.sub(lambda match: path_name(match[0]), text)


class LocalPaths:
    """The local files and folders a run names, cut to their last part wherever they are published.

    ``forms`` are the paths as they may appear in a text: typed (``../x/alice/photos``) and resolved
    (``/home/alice/x/alice/photos``). Each is also known without its trailing slash, normalized
    (``./photos/`` -> ``photos``), and as :func:`without_machine_paths` cut it in earlier cards (cut at
    its first space). :meth:`cut` replaces them longest first, then cuts what absolute paths remain with
    :func:`without_machine_paths`; :meth:`cut_command` does so word by word in a recorded command and
    quotes the result again (``shlex.join``), so it can still be run. Build one from a run record with
    :meth:`of_record`.
    """

    def __init__(self, forms: Iterable[str] = ()):
        self.names: dict[str, str] = {}  # a form -> its last part
        for form in filter(None, forms):
            trimmed = form.rstrip("/\\") or form
            for variant in (trimmed, _normalized(trimmed), without_machine_paths(trimmed)):
                if path_name(variant) != variant:  # a bare name is published as it is
                    self.names[variant] = path_name(variant)
        alternatives = "|".join(map(re.escape, sorted(self.names, key=len, reverse=True)))
        self.pattern = re.compile(f"{PATH_START}({alternatives})[/\\\\]?{PATH_END}") if self.names else None

    @classmethod
    def of_record(cls, record: Mapping, extra: Iterable[str] = ()) -> LocalPaths:
        """The paths a run record names (``RunRecord.to_dict()``, or ``hf_model_config.json`` as read), plus ``extra``.

        Each flag of :data:`PATH_FLAGS` counts with its config value (absolute when it was a local path at
        training time) and its value as typed in ``record["command"]``. A ``--dataset`` or ``--backbone`` shaped
        like a Hub id whose config value is too (it did not exist locally at training time) is a Hub id
        (:func:`is_hub_repo_id`) and stays as it is.
        """
        config = record.get("config") or {}
        recorded = {name: config.get(name) for name in PATH_FIELDS}
        recorded["output_dir"] = (record.get("training_args") or {}).get("output_dir")
        typed = typed_paths(record.get("command") or "", recorded)
        forms = list(extra)
        for name in PATH_FLAGS:
            values = [value for value in (recorded[name], typed.get(name)) if isinstance(value, str) and value]
            if name not in HUB_OR_LOCAL_FLAGS or not all(is_hub_repo_id(value, check_local=False) for value in values):
                forms += values
        return cls(forms)

    def cut(self, text: str) -> str:
        """``text`` with each known path cut to its last part, then every other absolute or home path."""
        if self.pattern:
            text = self.pattern.sub(lambda match: self.names[match[1]], text)
        return without_machine_paths(text)

    def cut_command(self, command: str) -> str:
        """A recorded command with its paths cut (:meth:`cut`), quoted so that it runs (``shlex.join``).

        Each known path is swapped for a placeholder word before the command is split (``shlex.split``; an older
        record joined its words with plain spaces, so one that does not split and join back to itself is split at
        spaces), so that a path with spaces stays one word even where an older record left it unquoted.
        """
        if not command:
            return command
        names: list[str] = []

        def placeholder(match: re.Match) -> str:
            names.append(self.names[match[1]])
            return f"\x00{len(names) - 1}\x00"

        marked = self.pattern.sub(placeholder, command) if self.pattern else command
        words = command_words(marked) if _quoted(command) else marked.split()
        return shlex.join(self.cut(PLACEHOLDER.sub(lambda match: names[int(match[1])], word)) for word in words)


def typed_paths(command: str, recorded: Mapping[str, str | None]) -> dict[str, str]:
    """``{flag: value}`` for each flag of ``recorded`` given in ``command`` (``--data_dir x``, ``--data-dir=x``).

    ``recorded`` maps the flags to their config values. Older records joined the command's words with plain
    spaces: a value cut at its spaces is joined up again with the words after it until its last part is the
    config value's (:func:`_rejoined`).
    """
    words = command_words(command)
    typed = {}
    for i, word in enumerate(words):
        flag, equals, value = word.partition("=")
        name = flag[2:].replace("-", "_")
        if not flag.startswith("--") or name not in recorded:
            continue
        following = words[i + 1:]
        if not equals:
            if not following:
                continue
            value, following = following[0], following[1:]
        typed[name] = _rejoined(value, following, recorded[name])
    return typed


def command_words(command: str) -> list[str]:
    """A recorded command's words: ``shlex.split``, or plain spaces where its quotes do not pair (older records)."""
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def _quoted(command: str) -> bool:
    """Whether ``command`` reads back as written: quoted by ``shlex.join`` (or with nothing that needs quoting)."""
    try:
        return shlex.join(shlex.split(command)) == command
    except ValueError:
        return False


def _rejoined(value: str, following: Sequence[str], recorded: str | None) -> str:
    """``value`` and as many ``following`` words as it takes to end in ``recorded``'s last part (else ``value``)."""
    if not recorded:
        return value
    joined = value
    for word in following:
        if path_name(joined) == path_name(recorded) or word.startswith("--"):
            break
        joined += f" {word}"
    return joined if path_name(joined) == path_name(recorded) else value


def _normalized(path: str) -> str:
    """``path`` as ``pathlib`` writes it (``./photos//x`` -> ``photos/x``): how the data loaders name a folder."""
    return str(PureWindowsPath(path) if "\\" in path else PurePosixPath(path))
