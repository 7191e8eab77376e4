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
  "Gen1:1-Rev22:21"``: 31,102 verses in 1,189 chapters), tokenised PTB-style
  (:func:`tokenize_verse`), one verse per line, in two versions (``data.version``):

  - **2** (the default, :func:`preprocess_kjv_v2`): split by chapter, spread through the whole
    Bible: the k-th chapter in Bible order (Genesis 1 is k = 1) goes to valid when
    k mod 20 = 10, to test when k mod 20 = 0, else to train (1,071 / 59 / 59 chapters), so
    every stretch of 20 chapters gives one to each held-out split (every book of 20 chapters
    or more has chapters in all three; 28 of the 66 books do). Cached under ``data.root/v2/``
    with a fourth file, the chapter index ``kjv.chapters.tsv`` (chapter, split, verses,
    tokens), part of the checksum: it is what ``data.subset`` samples whole chapters from
    (:func:`spread_chapters`).
  - **1** (:func:`preprocess_kjv`, the stored ``reproduction/lm_kjv`` records): split by verse,
    contiguously: the first 90 % train (to Romans 2:28), the next 5 % valid, the rest test.
    Held-out text is then another part of the Bible (epistles, Revelation), and a subset of
    the first N training tokens covers its first books only. Cached under ``data.root``.

  Both keep the vocabulary rule: the 9,999 most frequent training words (``<eos>`` among
  them) plus ``<unk>``. Each cache's manifest ``kjv.json`` holds the version and the sha256 of
  its files; version 2's also the unseen-word rates of valid and test and of a few spread
  subsets (:func:`unseen_rates`). A cache is built when missing and refused when its checksum
  does not match (a hand-edited cache would silently change every result); the two versions'
  caches live side by side, so switching never rebuilds over the other.

A corpus's checksum (sha256 over its split files, in order, and the KJV v2 chapter index) goes
into every record of a run trained on it, so two results on "the same" corpus can be told apart
when they are not.
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
KJV_SPLIT = (0.90, 0.05, 0.05)  # version 1: contiguous, by verse
KJV_PREPROCESS_VERSION = 1  # version 1's manifest version (its files never change)
#: Version 2's chapter rule: of every KJV_EVERY chapters (k = 1, 2, ... in Bible order), the
#: one with k mod KJV_EVERY = KJV_VALID_AT goes to valid, the one with KJV_TEST_AT to test.
KJV_EVERY, KJV_VALID_AT, KJV_TEST_AT = 20, 10, 0
#: Subset sizes (training tokens) whose unseen-word rates version 2's manifest reports.
KJV_REPORTED_SUBSETS = (100_000, 200_000, 400_000)
KJV_CHAPTERS_FILE = "kjv.chapters.tsv"


@dataclass
class Corpus:
    """A tokenised corpus: the vocabulary and each split as a stream of token ids.

    Args:
        name: the registry name.
        words: the vocabulary, id -> word.
        splits: split name -> LongTensor (N,) of token ids (each line ends with ``<eos>``).
        sha256: checksum of the split files (and a chapter index) (hex).
        files: the files read.
        version: the corpus version (``data.version``).
        chapters: split name -> ``[(reference, tokens), ...]``, each chapter's share of the
            split's stream in order (KJV v2); None: the corpus has no chapter index.
    """

    name: str
    words: list[str]
    splits: dict[str, torch.Tensor]
    sha256: str
    files: list[str] = field(default_factory=list)
    version: int = 1
    chapters: dict[str, list[tuple[str, int]]] | None = None

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def facts(self) -> dict:
        """What a record stores about the corpus (plain JSON)."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256,
                "vocab_size": self.vocab_size,
                "tokens": {k: int(v.numel()) for k, v in self.splits.items()}}

    def subset_chapters(self, n: int) -> list[int] | None:
        """Indices of the training chapters a subset of ``n`` tokens takes; None without a
        chapter index (the subset is then the first ``n`` tokens).

        Args:
            n: training tokens, 1 .. the training split's length.
        """
        if self.chapters is None:
            return None
        return spread_chapters([t for _, t in self.chapters["train"]], n)

    def train_subset(self, n: int) -> torch.Tensor:
        """The ``n``-token training stream ``data.subset`` = ``n`` trains on, LongTensor (n,).

        With a chapter index (KJV v2): the whole chapters :func:`spread_chapters` picks, in
        Bible order, cut to ``n`` tokens; without (KJV v1, PTB, WikiText-2): the first ``n``
        tokens, a contiguous stretch as a language model needs.

        Args:
            n: training tokens, 1 .. the training split's length.
        """
        train = self.splits["train"]
        if not 1 <= n <= train.numel():
            raise ValueError(f"subset of {n} tokens from a {train.numel()}-token split")
        chosen = self.subset_chapters(n)
        if chosen is None:
            return train[:n]
        sizes = [t for _, t in self.chapters["train"]]
        starts = [0]
        for t in sizes[:-1]:
            starts.append(starts[-1] + t)
        return torch.cat([train[starts[i]:starts[i] + sizes[i]] for i in chosen])[:n]

    def unseen_after_mapping(self, train: torch.Tensor) -> dict[str, float]:
        """Share of each held-out split's tokens (``<unk>`` and ``<eos>`` included) whose id
        never occurs in ``train``: words a model trained on that stream has never seen.

        Args:
            train: LongTensor (N,), the training stream a run uses (e.g. its subset).
        """
        seen = torch.unique(train)
        return {s: float((~torch.isin(self.splits[s], seen)).float().mean())
                for s in ("valid", "test")}


def read_token_files(name: str, paths: list[Path], extra: tuple[Path, ...] = ()) -> Corpus:
    """Read three split files (train, valid, test) as awd-lstm-lm's ``data.Corpus`` does.

    Args:
        name: the corpus's registry name (for messages and the result).
        paths: the train, valid and test files, in that order.
        extra: further files the checksum covers, after the splits (KJV v2's chapter index).

    Returns:
        The :class:`Corpus`; ids follow first appearance over train, valid, test.
    """
    for path in (*paths, *extra):
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
    for path in extra:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return Corpus(name, words, splits, digest.hexdigest(), [str(p) for p in (*paths, *extra)])


def _root(name: str, root: str | os.PathLike | None) -> Path:
    if root is None:
        root = DEFAULT_ROOTS[name]
        if root is None:
            raise DataError(f"data.root: null, but {name} has no default location; "
                            f"{_HOWTO[name]} and set data.root to that folder")
    return Path(os.path.expanduser(os.fspath(root)))


def load_corpus(name: str, root: str | os.PathLike | None = None,
                version: int | None = None) -> Corpus:
    """Load a registered corpus (building and caching the KJV first when needed).

    Args:
        name: ``ptb``, ``wikitext2`` or ``kjv``.
        root: the folder holding (or, for ``kjv``, caching) the split files; None: the
            corpus's default (only ``kjv`` has one, ``~/.cache/maxup/kjv``).
        version: the corpus version (``data.version``; :data:`maxup.config.DATA_VERSIONS`);
            None: the newest.
    """
    from maxup.config import data_versions
    from maxup.errors import ConfigError

    if name not in FILES:
        raise ConfigError("data.name", name, "one of " + ", ".join(sorted(FILES)))
    versions = data_versions(name)
    version = versions[-1] if version is None else version
    if version not in versions:
        raise ConfigError("data.version", version,
                          " or ".join(map(str, versions)) + f" (the {name} versions)")
    folder = _root(name, root)
    if name != "kjv":
        return read_token_files(name, [folder / f for f in FILES[name]])
    folder = kjv_folder(folder, version)
    ensure_kjv(folder, version)
    paths = [folder / f for f in FILES[name]]
    if version == 1:
        return read_token_files(name, paths)
    corpus = read_token_files(name, paths, extra=(folder / KJV_CHAPTERS_FILE,))
    corpus.version = version
    corpus.chapters = read_chapter_index(folder / KJV_CHAPTERS_FILE, corpus)
    return corpus


def kjv_folder(root: Path, version: int) -> Path:
    """Where KJV version ``version`` is cached under ``data.root``: v1 in ``root`` itself (as
    before versions existed), v2 in ``root/v2``.

    Args:
        root: the ``data.root`` folder.
        version: 1 or 2.
    """
    return root if version == 1 else root / f"v{version}"


def read_chapter_index(path: Path, corpus: Corpus) -> dict[str, list[tuple[str, int]]]:
    """Read KJV v2's chapter index: each split's chapters and their token counts, in order.

    Args:
        path: ``kjv.chapters.tsv`` (``reference<TAB>split<TAB>verses<TAB>tokens`` per chapter).
        corpus: the corpus its counts must add up to (each split's stream length).
    """
    out: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split("\t")
        if len(parts) != 4 or parts[1] not in out or not parts[3].isdigit():
            raise DataError(f"data.root: {path} line {i} is not 'chapter, split, verses, "
                            f"tokens'; delete {path.parent} to rebuild it")
        out[parts[1]].append((parts[0], int(parts[3])))
    for split in SPLITS:
        total, want = sum(t for _, t in out[split]), int(corpus.splits[split].numel())
        if total != want:
            raise DataError(f"data.root: {path} counts {total} {split} tokens, the split holds "
                            f"{want}; delete {path.parent} to rebuild it")
    return out


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


def _vocabulary(train: list[list[str]], vocab: int) -> set[str]:
    """The words kept (not ``<unk>``): the ``vocab - 1`` most frequent of the training verses,
    ``<eos>`` counted as a word (one per verse), ties broken alphabetically; ``<eos>`` itself
    is then left out (the reader adds it, it is never written)."""
    counts = collections.Counter(w for v in train for w in v)
    counts[EOS] = len(train)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    keep = {w for w, _ in ranked[: vocab - 1]}
    keep.discard(EOS)
    return keep


def _write(verses: list[list[str]], keep: set[str]) -> str:
    return "".join(" ".join(w if w in keep else UNK for w in v) + "\n" for v in verses)


def preprocess_kjv(lines: list[str], vocab: int = KJV_VOCAB,
                   split: tuple[float, float, float] = KJV_SPLIT) -> tuple[str, ...]:
    """Version 1: the verses as PTB-format train/valid/test texts (one verse per line).

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
    keep = _vocabulary(parts[0], vocab)
    return tuple(_write(part, keep) for part in parts)


def kjv_chapter_split(k: int) -> str:
    """The split of the ``k``-th chapter (1-based, Bible order; Genesis 1 is 1) in version 2:
    ``valid`` when k mod 20 = 10, ``test`` when k mod 20 = 0, else ``train``.

    Args:
        k: the chapter's position in the whole Bible, from 1.
    """
    r = k % KJV_EVERY
    return "valid" if r == KJV_VALID_AT else "test" if r == KJV_TEST_AT else "train"


_REFERENCE = re.compile(r"^(\S+):\d+$")


def group_chapters(lines: list[str]) -> list[tuple[str, list[str]]]:
    """The ``bible`` output's verses grouped by chapter, in order.

    Args:
        lines: one verse per line, each starting with its reference (``1Sm3:4 ...``); the
            chapter is the reference up to its last colon (``1Sm3``).

    Returns:
        ``[(chapter, [verse lines]), ...]`` in the order read.
    """
    out: list[tuple[str, list[str]]] = []
    for line in lines:
        if not line.strip():
            continue
        m = _REFERENCE.match(line.split(" ", 1)[0])
        if m is None:
            raise DataError(f"data.name: kjv: verse line {line[:40]!r} does not start with a "
                            "reference like 'Ge1:1'; reinstall bible-kjv")
        if not out or out[-1][0] != m.group(1):
            out.append((m.group(1), []))
        out[-1][1].append(line)
    return out


def spread_chapters(tokens: list[int], n: int) -> list[int]:
    """Whole chapters spread evenly through a split, enough for ``n`` tokens.

    Of the ``T`` chapters (token counts ``tokens``, in order), the ``k`` at positions
    ``floor((i + 1/2) * T / k)``, i = 0 .. k-1, for the smallest ``k`` whose chapters hold at
    least ``n`` tokens: the subset reads every part of the split, each chapter whole (the
    last one may be cut when the stream is cut to ``n``).

    Args:
        tokens: tokens per chapter (each > 0), in split order.
        n: tokens wanted, 1 .. sum(tokens).

    Returns:
        The chosen chapters' indices, ascending.
    """
    total = len(tokens)
    if not 1 <= n <= sum(tokens):
        raise ValueError(f"{n} tokens from {total} chapters holding {sum(tokens)}")
    for k in range(1, total + 1):
        chosen = [(2 * i + 1) * total // (2 * k) for i in range(k)]
        if sum(tokens[j] for j in chosen) >= n:
            return chosen
    raise AssertionError("unreachable: k = T takes every chapter")


def _stream(verses: list[list[str]]) -> list[str]:
    """The tokens a reader makes of verses: each verse's words, then ``<eos>``."""
    return [w for v in verses for w in (*v, EOS)]


def unseen_rates(train: list[str], held_out: list[str], keep: set[str]) -> dict[str, float]:
    """How much of a held-out token stream a training stream never shows.

    Args:
        train: the training tokens (words and ``<eos>``), before ``<unk>`` mapping.
        held_out: the held-out tokens, the same way.
        keep: the vocabulary's words (the rest become ``<unk>``; ``<eos>`` never does).

    Returns:
        ``unseen``: share of held-out tokens whose word never occurs in ``train`` (before
        mapping); ``unk``: share that are ``<unk>`` after mapping; ``unseen_after_mapping``:
        share whose token after mapping (``<unk>`` included) never occurs in ``train`` after
        mapping (0 against the whole training split, whose words make the vocabulary).
    """
    def mapped(w: str) -> str:
        return w if w in keep or w == EOS else UNK

    seen = set(train)
    seen_mapped = {mapped(w) for w in seen}
    n = len(held_out)
    return {"unseen": sum(w not in seen for w in held_out) / n,
            "unk": sum(mapped(w) == UNK for w in held_out) / n,
            "unseen_after_mapping": sum(mapped(w) not in seen_mapped for w in held_out) / n}


@dataclass
class KJVBuild:
    """Version 2's files and the facts its manifest states.

    Args:
        texts: train, valid and test, PTB format (one verse per line).
        index: the chapter index (``chapter<TAB>split<TAB>verses<TAB>tokens`` per line).
        stats: chapters and tokens per split; the held-out splits' unseen-word rates against
            the training split and against each of :data:`KJV_REPORTED_SUBSETS`.
    """

    texts: tuple[str, str, str]
    index: str
    stats: dict


def preprocess_kjv_v2(lines: list[str], vocab: int = KJV_VOCAB,
                      subsets: tuple[int, ...] = KJV_REPORTED_SUBSETS) -> KJVBuild:
    """Version 2: the chapters dealt to train/valid/test by :func:`kjv_chapter_split`.

    Each split holds its chapters whole, in Bible order, one verse per line; the vocabulary
    rule is version 1's (the ``vocab - 1`` most frequent training words, ``<eos>`` counted,
    ties alphabetical, plus ``<unk>``).

    Args:
        lines: the ``bible`` output, one verse per line.
        vocab: vocabulary size including ``<unk>``.
        subsets: training-subset sizes (tokens) to report unseen-word rates for; those larger
            than the training split are left out.
    """
    parts: dict[str, list[tuple[str, list[list[str]]]]] = {s: [] for s in SPLITS}
    index = []
    for k, (chapter, verse_lines) in enumerate(group_chapters(lines), 1):
        verses = [tokenize_verse(line) for line in verse_lines]
        split = kjv_chapter_split(k)
        parts[split].append((chapter, verses))
        index.append(f"{chapter}\t{split}\t{len(verses)}\t{len(_stream(verses))}\n")
    if not all(parts.values()):
        raise DataError(f"data.name: kjv: {len(index)} chapters leave a split empty; expected "
                        f"at least {KJV_EVERY}; reinstall bible-kjv")
    flat = {s: [v for _, vs in parts[s] for v in vs] for s in SPLITS}
    keep = _vocabulary(flat["train"], vocab)
    streams = {s: _stream(flat[s]) for s in SPLITS}
    stats: dict = {
        "chapters": {s: len(parts[s]) for s in SPLITS},
        "tokens": {s: len(streams[s]) for s in SPLITS},
        "unseen": {s: _rates(streams["train"], streams[s], keep, ("unseen", "unk"))
                   for s in ("valid", "test")},
        "subsets": {},
    }
    sizes = [len(_stream(vs)) for _, vs in parts["train"]]
    for n in subsets:
        if n > len(streams["train"]):
            continue
        chosen = spread_chapters(sizes, n)
        sub = _stream([v for j in chosen for v in parts["train"][j][1]])[:n]
        # The <unk> rate does not depend on the subset (the vocabulary is the whole split's).
        stats["subsets"][str(n)] = {"chapters": len(chosen), **{
            s: _rates(sub, streams[s], keep, ("unseen", "unseen_after_mapping"))
            for s in ("valid", "test")}}
    return KJVBuild(tuple(_write(flat[s], keep) for s in SPLITS), "".join(index), stats)


def _rates(train: list[str], held_out: list[str], keep: set[str], keys: tuple[str, ...]) -> dict:
    r = unseen_rates(train, held_out, keep)
    return {k: round(r[k], 6) for k in keys}


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


def ensure_kjv(folder: Path, version: int = 2) -> str:
    """Build the KJV files of ``version`` under ``folder`` unless a valid cache is there.

    The cache's manifest ``kjv.json`` holds the version and the files' checksum; a cache
    whose files no longer match it is refused (one line, never rebuilt over: someone changed
    it), a cache of another version is rebuilt (each version has its own folder,
    :func:`kjv_folder`, so that happens only to a cache from before versions existed).

    Args:
        folder: the cache folder (``kjv_folder(data.root, version)``).
        version: 1 (:func:`preprocess_kjv`) or 2 (:func:`preprocess_kjv_v2`).

    Returns:
        The corpus checksum (sha256 over the three split files, then v2's chapter index).
    """
    paths = [folder / f for f in FILES["kjv"]]
    if version != 1:
        paths.append(folder / KJV_CHAPTERS_FILE)
    manifest = folder / "kjv.json"
    if manifest.is_file() and all(p.is_file() for p in paths):
        try:
            meta = json.loads(manifest.read_text())
        except ValueError:
            meta = {}
        if isinstance(meta, dict) and meta.get("version") == version:
            found = _files_sha256(paths)
            if found != meta.get("sha256"):
                raise DataError(f"data.root: the kjv cache in {folder} has checksum {found[:12]}, "
                                f"its kjv.json says {str(meta.get('sha256'))[:12]}; delete "
                                f"{folder} to rebuild it")
            return found
    source = f"bible -f {KJV_RANGE} (Debian bible-kjv)"
    if version == 1:
        texts: tuple[str, ...] = preprocess_kjv(_kjv_lines())
        meta = {"version": KJV_PREPROCESS_VERSION, "source": source, "vocab": KJV_VOCAB,
                "split": list(KJV_SPLIT)}
    else:
        build = preprocess_kjv_v2(_kjv_lines())
        texts = (*build.texts, build.index)
        meta = {"version": version, "source": source, "vocab": KJV_VOCAB,
                "split": f"by chapter: the k-th chapter in Bible order (Genesis 1 is k = 1) goes "
                         f"to valid when k mod {KJV_EVERY} = {KJV_VALID_AT}, to test when "
                         f"k mod {KJV_EVERY} = {KJV_TEST_AT}, else to train",
                "subset": "data.subset = N: whole training chapters spread evenly "
                          "(maxup.data.corpus.spread_chapters), in Bible order, cut to N tokens",
                "rates": "over tokens (words plus one <eos> per verse): unseen, the share whose "
                         "word never occurs in the training split (or subset) before <unk> "
                         "mapping; unk, the share that are <unk> after mapping; "
                         "unseen_after_mapping, the share whose token after mapping never "
                         "occurs in the subset after mapping",
                **build.stats}
    for path, text in zip(paths, texts, strict=True):
        atomic_write_text(path, text)
    sha = _files_sha256(paths)
    atomic_write_json(manifest, {**meta, "sha256": sha})
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
