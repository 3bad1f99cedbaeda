"""Settings of the web app (the server's slice of fleetscope.toml)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class WebSettings:
    """What :func:`fleetscope.web.app.create_app` needs besides the stores.

    ``data_dir`` holds ``admin.token``; ``clock`` returns seconds since the epoch (tests pin it).
    """

    data_dir: Path
    title: str = "Fleetscope"
    default_window: str = "24h"
    idle_threshold: float = 0.05  # utilization ratio below which an allocated GPU is idle
    cookie_name: str = "fleetscope_session"
    cookie_max_age_s: int = 30 * 86_400
    clock: Callable[[], float] = field(default=time.time)
