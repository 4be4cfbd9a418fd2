"""One thin module per command: parse options, build a config, call one library function, render."""
