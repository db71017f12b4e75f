"""Models: a tiny random Qwen2.5-VL built offline (``tiny_model``) and turn-1 generation for
EasyR1's stage 2 (``rollout``: ``getok rollout-proposals``). Torch / transformers are imported
only inside functions."""
