"""python -m llasm_export CKPT OUT [--type f16 --type f32]: the same as `llasm export`."""

import typer
from llasm_export.cli import export

from llasm_cli.cli import run_app

if __name__ == "__main__":
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(export)
    run_app(app)
