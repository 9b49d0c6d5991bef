"""The one place where the kit reaches into other libraries' private internals, one module per library.

Each use here has no public equivalent in the versions the kit supports, and a test in ``tests/compat/``
that names the library's version when the internal changes. Nothing in this package imports Lightning
unless its Lightning module is imported: ``heads/`` and ``backbones/`` stay free of it.
"""
