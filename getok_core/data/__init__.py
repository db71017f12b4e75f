"""Datasets and training data: samples (``records``), COCO RLE masks (``masks``), the reward
ground-truth JSON (``groundtruth``), dataset loaders (``loaders``), row writers for ms-swift /
EasyR1 / verl (``writers``), the bundled sample (``sample_data``), mask -> ``<seg>`` points
(``greedy``), offset-aware refinement data (``offsets``), append-only records and atomic files
(``store``)."""
