"""The node agent: sizes, starts and supervises worker processes; drains on SIGTERM or spot notice.

`run_node(NodeConfig(...))` is the library entry point; `fleetinfer run` only parses and calls it.
"""
