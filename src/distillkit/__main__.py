"""Entry point for ``python -m distillkit``."""

from distillkit.app.cli import main

if __name__ == "__main__":
    main()
