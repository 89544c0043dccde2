"""Commands of this area are registered through COMMANDS."""
from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
