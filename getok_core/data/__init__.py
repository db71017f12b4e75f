"""Datasets and training data: samples (``records``), COCO RLE masks (``masks``), images
(``images``: loading, EXIF frame, RGB), the reward ground-truth JSON (``groundtruth``), dataset
loaders (``loaders``: the registry and JSONL / points / lanes / sample; ``refer``: RefCOCO/+/g and
gRefCOCO; ``coco``; ``reasonseg``; ``rows``: what they share), row writers for ms-swift / EasyR1 /
verl (``writers``), the bundled sample (``sample_data``), mask -> ``<seg>`` points (``greedy``),
offset-aware refinement data (``offsets``), append-only records and atomic files (``store``)."""
