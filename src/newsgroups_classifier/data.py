"""Loading the 20 Newsgroups data through scikit-learn's own loader, online or from a local archive."""

from __future__ import annotations

import codecs
import hashlib
import os
import pickle
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sklearn.datasets import fetch_20newsgroups, get_data_home, load_files

ARCHIVE_ENV = "NEWSGROUPS_ARCHIVE"
CACHE_NAME = "20news-bydate_py3.pkz"  # the file name scikit-learn's loader looks for
DEFAULT_CATEGORIES = ("rec.autos", "rec.motorcycles", "rec.sport.baseball", "rec.sport.hockey")
ALL_CATEGORIES = (
    "alt.atheism",
    "comp.graphics",
    "comp.os.ms-windows.misc",
    "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware",
    "comp.windows.x",
    "misc.forsale",
    "rec.autos",
    "rec.motorcycles",
    "rec.sport.baseball",
    "rec.sport.hockey",
    "sci.crypt",
    "sci.electronics",
    "sci.med",
    "sci.space",
    "soc.religion.christian",
    "talk.politics.guns",
    "talk.politics.mideast",
    "talk.politics.misc",
    "talk.religion.misc",
)
STRIPPED_PARTS = ("headers", "footers", "quotes")


class DataUnavailableError(RuntimeError):
    """The data set can be neither found locally nor downloaded."""


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[str]


def validate_categories(categories: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    unknown = sorted(set(categories) - set(ALL_CATEGORIES))
    if unknown:
        raise ValueError(
            f"unknown categories: {', '.join(unknown)}; valid names are: {', '.join(ALL_CATEGORIES)}"
        )
    if len(set(categories)) < 2:
        raise ValueError("a classifier needs at least two distinct categories")
    return tuple(sorted(set(categories)))


def build_cache_from_archive(archive: Path, data_home: Path) -> Path:
    """Build scikit-learn's cache file from the by-date archive, exactly as its downloader does."""
    if not archive.is_file():
        raise DataUnavailableError(
            f"the archive {archive} does not exist; set {ARCHIVE_ENV} to the path of 20news-bydate.tar.gz"
        )
    data_home.mkdir(parents=True, exist_ok=True)
    cache_path = data_home / CACHE_NAME
    if cache_path.exists():
        return cache_path
    with tempfile.TemporaryDirectory(dir=data_home) as tmp:
        with tarfile.open(archive, "r:gz") as tar:
            # The "data" filter (no links out, no special files) where this Python has it: from 3.11.4 on.
            # The image's Python may be older (Debian's 3.11.2): scikit-learn's own download extracts
            # without it.
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        cache = {
            subset: load_files(os.path.join(tmp, f"20news-bydate-{subset}"), encoding="latin1")
            for subset in ("train", "test")
        }
    partial = cache_path.with_suffix(".tmp")
    partial.write_bytes(codecs.encode(pickle.dumps(cache), "zlib_codec"))
    os.replace(partial, cache_path)
    return cache_path


def load_split(
    subset: str,
    categories: tuple[str, ...] = DEFAULT_CATEGORIES,
    strip: bool = True,
    archive: str | os.PathLike | None = None,
    data_home: str | os.PathLike | None = None,
) -> Split:
    """One split ("train" or "test") with string labels, in scikit-learn's deterministic order.

    With an archive (argument or NEWSGROUPS_ARCHIVE) no network is used; without one, scikit-learn
    downloads the data set unless its cache already exists.
    """
    home = Path(data_home or get_data_home())
    archive = archive or os.environ.get(ARCHIVE_ENV)
    if archive:
        build_cache_from_archive(Path(archive), home)
    try:
        bunch = fetch_20newsgroups(
            subset=subset,
            categories=list(validate_categories(categories)),
            remove=STRIPPED_PARTS if strip else (),
            data_home=str(home),
            download_if_missing=not (home / CACHE_NAME).exists(),
            shuffle=False,
        )
    except (OSError, EOFError) as exc:  # URLError is an OSError
        raise DataUnavailableError(
            f"the 20 Newsgroups data is not cached in {home} and could not be downloaded ({exc}). "
            f"Offline, point {ARCHIVE_ENV} (or --data-archive) at a copy of 20news-bydate.tar.gz."
        ) from exc
    labels = [bunch.target_names[i] for i in bunch.target]
    return Split(texts=list(bunch.data), labels=labels)


def fingerprint(split: Split) -> str:
    """A sha256 over the labelled documents, to tell which data trained a model."""
    digest = hashlib.sha256()
    for text, label in zip(split.texts, split.labels, strict=True):
        digest.update(label.encode())
        digest.update(b"\0")
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()
