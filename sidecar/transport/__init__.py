"""The thin I/O layer on trio.lowlevel shared by every listener and upstream connection."""
