from metakd_cli.cli import main

main()
