"""Files of a model directory, and never a file outside it.

A model directory names other files: a safetensors index names its shards, a directory's
tokenizer files are copied into checkpoints and exports. Each such name must stay inside the
directory — no absolute paths, no `..`, no symlink whose target lies elsewhere — or a crafted
directory could make grm-jax read (and copy into its outputs) any file on the host.

One layout is allowed to point outside: the Hugging Face hub cache, where
`models--ORG--NAME/snapshots/REV/FILE` is a symlink to `models--ORG--NAME/blobs/HASH`.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

# The files that make up a tokenizer (and its chat template), the only ones copied with a model.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json")


class UnsafePathError(ValueError):
    """A file named by a model directory lies outside it."""


def _allowed_roots(directory: Path) -> list[Path]:
    real = directory.resolve()
    roots = [real]
    if real.parent.name == "snapshots":  # the HF hub cache: snapshot files link into ../../blobs
        roots.append(real.parent.parent / "blobs")
    return roots


def member(directory: str | Path, name: str, *, what: str = "file") -> Path:
    """`directory / name`, refused unless it (and any symlink target) stays inside `directory`.

    Args:
      directory: the model directory.
      name: a relative path inside it, as written in an index or a file list.
      what: how the error names the file ("shard", "tokenizer file").

    Raises:
      UnsafePathError: `name` is absolute, climbs out with `..`, or is a symlink to elsewhere.
    """
    directory = Path(directory)
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"{directory}: {what} name {name!r} is not a relative path")
    parts = PurePosixPath(name.replace("\\", "/"))
    if parts.is_absolute() or Path(name).is_absolute() or ".." in parts.parts:
        raise UnsafePathError(f"{directory}: {what} {name!r} lies outside the model directory "
                              "(absolute or '..' paths are refused)")
    path = directory / name
    real = path.resolve()
    if not any(real == root or root in real.parents for root in _allowed_roots(directory)):
        raise UnsafePathError(f"{directory}: {what} {name!r} is a link to {real}, outside the model "
                              "directory; copy the file into the directory instead")
    return path


def tokenizer_files(directory: str | Path) -> list[Path]:
    """The tokenizer files of `directory` (only TOKENIZER_FILES names, each checked by `member`)."""
    directory = Path(directory)
    found = []
    for name in TOKENIZER_FILES:
        if (directory / name).is_file():
            found.append(member(directory, name, what="tokenizer file"))
    return found
