"""``python -m ultrassl`` (and so ``torchrun -m ultrassl pretrain ...``)."""

from ultrassl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
