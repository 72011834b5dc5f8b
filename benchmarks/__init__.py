"""Figures for the design notes; scripts, not tests (``make bench``)."""
