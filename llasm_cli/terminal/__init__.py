"""The terminal: the interactive chat, keyboard input, rich rendering."""
