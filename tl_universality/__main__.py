"""``python -m tl_universality``: the ``tl-universality`` command line."""

from tl_universality.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
