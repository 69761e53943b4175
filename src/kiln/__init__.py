"""kiln: pre-built wheels for hard-to-build Python packages, served from a devpi mirror."""

from __future__ import annotations

__version__ = "0.1.0"
