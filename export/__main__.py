"""python -m llasm_export CKPT OUT [--type f16 --type f32]: the same as `llasm export`."""

from llasm_cli.cli import main

if __name__ == "__main__":
    import sys

    main(["export", *sys.argv[1:]])
