"""The CLI's subcommands, one module each: parse the arguments, call the package that does the work, print.

No logic of their own; may import anything of ``proxy`` and ``inference``. ``proxy.cli`` registers them.
"""
