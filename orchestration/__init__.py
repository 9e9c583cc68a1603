"""Dagster orchestration of the AlignRec pipeline. Thin: assets call the ``alignrec`` library."""
