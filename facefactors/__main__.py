"""``python -m facefactors`` (and ``torchrun -m facefactors``) runs the command line."""
from facefactors.cli import main

raise SystemExit(main())
