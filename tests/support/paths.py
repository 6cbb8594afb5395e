"""Where the repository and the shared data live."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("NEWSGROUPS_SHARED", REPO.parent / "shared")).resolve()
ARCHIVE = SHARED / "data" / "20newsgroups" / "20news-bydate.tar.gz"
