"""Models: the GETok rows of a tokenizer and its embeddings, framework-free (``tokens``: add the
tokens as ordinary added tokens, initial text of each row, single-id checks, a decode proxy that
keeps GETok tokens), a tiny random Qwen2.5-VL built offline (``tiny_model``), and turn-1
generation for EasyR1's stage 2 (``rollout``: ``getok rollout-proposals``). Torch / transformers
are imported only inside functions."""
