from llasm_cli.cli import main

main()
