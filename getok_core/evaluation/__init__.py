"""Scoring model answers: metrics (``metrics``), ``getok eval`` (``evaluate``), overlays and
the HTML report (``viz``)."""
