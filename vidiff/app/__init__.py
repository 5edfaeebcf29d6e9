"""The faces: the `vidiff` command line (one module per command group) and the web UI.

May import anything; nothing in vidiff imports it.
"""
