"""Command functions of the ``alignrec`` CLI, one module per domain (registered in alignrec.cli)."""
