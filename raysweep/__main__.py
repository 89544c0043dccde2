"""``python -m raysweep`` = ``raysweep``."""
from raysweep.cli import main

main()
