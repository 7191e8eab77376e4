"""Word-level corpora for language modelling: ``ptb``, ``wikitext2`` and ``kjv``; never downloaded.

All three are read the way salesforce/awd-lstm-lm's ``data.py`` reads them: each line of a
split file is split on whitespace and ends with one ``<eos>``; the vocabulary is every word in
order of first appearance over train, then valid, then test (so PTB has exactly 10,000 words
and WikiText-2 33,278, the counts behind the AWD-LSTM parameter counts).

- ``ptb``: Mikolov's preprocessed ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt``
  under ``data.root``.
- ``wikitext2``: ``wiki.train.tokens``, ``wiki.valid.tokens``, ``wiki.test.tokens`` under
  ``data.root`` (the tokenised, ``<unk>``-ed release).
- ``kjv``: the King James Bible from Debian's ``bible-kjv`` package (``bible -f
  "Gen1:1-Rev22:21"``: 31,102 verses), preprocessed PTB-style by :func:`preprocess_kjv` and
  cached under ``data.root`` as ``kjv.{train,valid,test}.txt`` (PTB's file format), with the
  sha256 of those files in ``kjv.json``. The cache is rebuilt when missing and refused when its
  checksum does not match (a hand-edited cache would silently change every result).

A corpus's checksum (sha256 over its three split files, in order) goes into every record of
a run trained on it, so two results on "the same" corpus can be told apart when they are not.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

from maxup.data.registry import DatasetInfo, register_dataset
from maxup.errors import DataError
from maxup.io import atomic_write_json, atomic_write_text

SPLITS = ("train", "valid", "test")
EOS, UNK = "<eos>", "<unk>"
#: File names per corpus, in SPLITS order.
FILES = {
    "ptb": ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
    "wikitext2": ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"),
    "kjv": ("kjv.train.txt", "kjv.valid.txt", "kjv.test.txt"),
}
DEFAULT_ROOTS = {
    "ptb": None,  # no default: the files must be put somewhere and named
    "wikitext2": None,
    "kjv": "~/.cache/maxup/kjv",
}
_HOWTO = {
    "ptb": "put Mikolov's preprocessed ptb.train.txt, ptb.valid.txt and ptb.test.txt "
           "(e.g. from salesforce/awd-lstm-lm's getdata.sh) in data.root",
    "wikitext2": "put wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens from the "
                 "WikiText-2 (tokens) release in data.root",
    "kjv": "install Debian's bible-kjv package (apt-get install bible-kjv), which provides "
           "the bible command the kjv corpus is built from",
}

# The KJV build: the verse range, its expected size, and the preprocessing's parameters.
KJV_RANGE = "Gen1:1-Rev22:21"
KJV_VERSES = 31_102
KJV_VOCAB = 10_000  # the 9,999 most frequent training words (<eos> among them) plus <unk>
KJV_SPLIT = (0.90, 0.05, 0.05)  # contiguous, by verse
KJV_PREPROCESS_VERSION = 1  # bump when preprocess_kjv changes: the cache is rebuilt


@dataclass
class Corpus:
    """A tokenised corpus: the vocabulary and each split as a stream of token ids.

    Args:
        name: the registry name.
        words: the vocabulary, id -> word.
        splits: split name -> LongTensor (N,) of token ids (each line ends with ``<eos>``).
        sha256: checksum of the three split files (hex).
        files: the split files read.
    """

    name: str
    words: list[str]
    splits: dict[str, torch.Tensor]
    sha256: str
    files: list[str] = field(default_factory=list)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def facts(self) -> dict:
        """What a record stores about the corpus (plain JSON)."""
        return {"name": self.name, "sha256": self.sha256, "vocab_size": self.vocab_size,
                "tokens": {k: int(v.numel()) for k, v in self.splits.items()}}


def read_token_files(name: str, paths: list[Path]) -> Corpus:
    """Read three split files (train, valid, test) as awd-lstm-lm's ``data.Corpus`` does.

    Args:
        name: the corpus's registry name (for messages and the result).
        paths: the train, valid and test files, in that order.

    Returns:
        The :class:`Corpus`; ids follow first appearance over train, valid, test.
    """
    for path in paths:
        if not path.is_file():
            raise DataError(f"data.root: {path} not found; {_HOWTO[name]}")
    index: dict[str, int] = {}
    words: list[str] = []
    splits: dict[str, torch.Tensor] = {}
    digest = hashlib.sha256()
    for split, path in zip(SPLITS, paths, strict=True):
        raw = path.read_bytes()
        digest.update(hashlib.sha256(raw).digest())
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"data.root: {path} is not UTF-8 text ({exc.reason} at byte "
                            f"{exc.start}); {_HOWTO[name]}") from None
        ids: list[int] = []
        # Lines as awd-lstm-lm's data.py reads them (a text file's iteration: universal
        # newlines, \n, \r, \r\n), not str.splitlines(), which also ends a line at \v, \f,
        # \x1c-\x1e, \x85, \u2028 and \u2029 and would add an <eos> there (issue 29).
        for line in io.StringIO(text, newline=None):
            for word in line.split() + [EOS]:
                i = index.get(word)
                if i is None:
                    i = index[word] = len(words)
                    words.append(word)
                ids.append(i)
        if len(ids) < 2:
            raise DataError(f"data.root: {path} holds no text; {_HOWTO[name]}")
        splits[split] = torch.tensor(ids, dtype=torch.long)
    return Corpus(name, words, splits, digest.hexdigest(), [str(p) for p in paths])


def _root(name: str, root: str | os.PathLike | None) -> Path:
    if root is None:
        root = DEFAULT_ROOTS[name]
        if root is None:
            raise DataError(f"data.root: null, but {name} has no default location; "
                            f"{_HOWTO[name]} and set data.root to that folder")
    return Path(os.path.expanduser(os.fspath(root)))


def load_corpus(name: str, root: str | os.PathLike | None = None) -> Corpus:
    """Load a registered corpus (building and caching the KJV first when needed).

    Args:
        name: ``ptb``, ``wikitext2`` or ``kjv``.
        root: the folder holding (or, for ``kjv``, caching) the split files; None: the
            corpus's default (only ``kjv`` has one, ``~/.cache/maxup/kjv``).
    """
    if name not in FILES:
        from maxup.errors import ConfigError

        raise ConfigError("data.name", name, "one of " + ", ".join(sorted(FILES)))
    folder = _root(name, root)
    if name == "kjv":
        ensure_kjv(folder)
    return read_token_files(name, [folder / f for f in FILES[name]])


# --------------------------------------------------------------------------- the KJV

_WORD = re.compile(r"[a-z0-9]+|'s\b")


def tokenize_verse(line: str) -> list[str]:
    """One ``bible`` output line -> its words, PTB-style.

    The verse reference (``Ge1:1``, the first field) is dropped, the text lower-cased and
    punctuation stripped; possessive ``'s`` stays a token of its own, as PTB writes it
    (``the lord 's house``); other apostrophes (``sons'``) and hyphens separate or vanish.

    Args:
        line: e.g. ``"Ge1:1 In the beginning God created the heaven and the earth."``.
    """
    parts = line.split(" ", 1)
    text = parts[1] if len(parts) == 2 else ""
    return _WORD.findall(text.lower())


def preprocess_kjv(lines: list[str], vocab: int = KJV_VOCAB,
                   split: tuple[float, float, float] = KJV_SPLIT) -> tuple[list[str], ...]:
    """Turn the verses into PTB-format train/valid/test texts (one verse per line).

    The split is contiguous by verse (first 90 % train, next 5 % valid, the rest test) so no
    verse's neighbours leak across splits. The vocabulary is the ``vocab - 1`` most frequent
    words of the *training* split, ``<eos>`` counted as a word (one per verse), ties broken
    alphabetically, plus ``<unk>``, which replaces every other word in all three splits.

    Args:
        lines: the ``bible`` output, one verse per line.
        vocab: vocabulary size including ``<unk>``.
        split: train/valid/test fractions (summing to 1).

    Returns:
        The three texts, each ending with a newline.
    """
    verses = [tokenize_verse(line) for line in lines if line.strip()]
    n = len(verses)
    a = int(n * split[0])
    b = a + int(n * split[1])
    parts = (verses[:a], verses[a:b], verses[b:])
    counts = collections.Counter(w for v in parts[0] for w in v)
    counts[EOS] = len(parts[0])
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    keep = {w for w, _ in ranked[: vocab - 1]}
    keep.discard(EOS)  # written by the reader, not into the files
    out = []
    for part in parts:
        out.append("".join(" ".join(w if w in keep else UNK for w in v) + "\n" for v in part))
    return tuple(out)


def _kjv_lines() -> list[str]:
    exe = shutil.which("bible")
    if exe is None:
        raise DataError(f"data.name: kjv needs the 'bible' command, not found on PATH; "
                        f"{_HOWTO['kjv']}")
    try:
        out = subprocess.run([exe, "-f", KJV_RANGE], stdin=subprocess.DEVNULL,
                             capture_output=True, timeout=300, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        raise DataError(f"data.name: kjv: running 'bible -f {KJV_RANGE}' failed "
                        f"({type(exc).__name__}); {_HOWTO['kjv']}") from None
    lines = out.stdout.decode("utf-8", errors="replace").splitlines()
    lines = [ln for ln in lines if ln.strip()]
    if len(lines) != KJV_VERSES:
        raise DataError(f"data.name: kjv: 'bible -f {KJV_RANGE}' printed {len(lines)} verses, "
                        f"expected {KJV_VERSES}; reinstall bible-kjv")
    return lines


def _files_sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest()


def ensure_kjv(folder: Path) -> str:
    """Build the KJV split files under ``folder`` unless a valid cache is there.

    The cache's manifest ``kjv.json`` holds the preprocessing version and the files'
    checksum; a cache whose files no longer match it is refused (one line, never rebuilt
    over: someone changed it), a cache of another preprocessing version is rebuilt.

    Args:
        folder: the cache folder (``data.root``).

    Returns:
        The corpus checksum (sha256 over the three files).
    """
    paths = [folder / f for f in FILES["kjv"]]
    manifest = folder / "kjv.json"
    if manifest.is_file() and all(p.is_file() for p in paths):
        try:
            meta = json.loads(manifest.read_text())
        except ValueError:
            meta = {}
        if meta.get("version") == KJV_PREPROCESS_VERSION:
            found = _files_sha256(paths)
            if found != meta.get("sha256"):
                raise DataError(f"data.root: the kjv cache in {folder} has checksum {found[:12]}, "
                                f"its kjv.json says {str(meta.get('sha256'))[:12]}; delete "
                                f"{folder} to rebuild it")
            return found
    texts = preprocess_kjv(_kjv_lines())
    for path, text in zip(paths, texts, strict=True):
        atomic_write_text(path, text)
    sha = _files_sha256(paths)
    atomic_write_json(manifest, {"version": KJV_PREPROCESS_VERSION, "source":
                                 f"bible -f {KJV_RANGE} (Debian bible-kjv)",
                                 "vocab": KJV_VOCAB, "split": list(KJV_SPLIT), "sha256": sha})
    return sha


# --------------------------------------------------------------------------- registry

def _register(name: str, vocab: int | None) -> None:
    info = DatasetInfo(num_classes=vocab or 0, in_channels=0, image_size=(0, 0), mean=(),
                       std=(), default_root=DEFAULT_ROOTS[name], train_size=None,
                       test_size=None, kind="text")

    def build(*, split: str, root: str | None, train_transform: str, download: bool):
        """The split's token ids, LongTensor (N,) (``valid`` via :func:`load_corpus`)."""
        if download:
            raise DataError(f"data.download: corpora are never downloaded; {_HOWTO[name]}")
        return load_corpus(name, root).splits[split]

    build.__name__ = name
    register_dataset(name, info)(build)


_register("ptb", 10_000)
_register("wikitext2", 33_278)
_register("kjv", KJV_VOCAB)


def is_text_dataset(name: str) -> bool:
    """Whether a registered dataset name is a corpus (a language-modelling task)."""
    return name in FILES
