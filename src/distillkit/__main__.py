"""Entry point for ``python -m distillkit``."""

from distillkit.cli import main

if __name__ == "__main__":
    main()
