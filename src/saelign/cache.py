"""Where saelign keeps what it fetches or converts once: registry data, converted models, benchmark work."""

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("SAELIGN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "saelign"
    )
    return Path(root)
