"""Tokens and geometry: the vocabulary (``vocab``), normalized coordinates and the pixel rule
(``coords``), geometry <-> cells (``instance``), answer text <-> instances (``answer``), box IoU
and polyline distance (``geometry``), model-output text handling (``text``)."""
