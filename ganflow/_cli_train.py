"""Training commands of the CLI (``train``, ``sample``, ``plot``); registered by cli.py."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the training commands to ``app`` (none yet: see the trainer issue)."""
