"""The tutorial notebooks (``*.ipynb``), package data: ``skerry.tutorials`` copies them into every new home."""
