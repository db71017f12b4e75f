"""GETok's ms-swift plugin: ``--custom_register_path /abs/path/swift_plugin/register.py``.

ms-swift loads this FILE under a generated module name (``spec_from_file_location``), so it imports
its siblings by their absolute package names (the repository is pip-installed). Importing it
registers (idempotently: loading it twice, as a file and as ``swift_plugin.register``, is fine):

- model types ``getok_qwen2_5_vl``, ``getok_qwen2_vl``, ``getok_qwen3_vl`` (``swift_plugin.getok_model``)
- templates of the same names (``swift_plugin.getok_template``)
- datasets ``getok-sample``, ``getok-sample-refine``, ``getok-sample-val``, ``getok-sample-val-refine``
  and the files in ``GETOK_DATASET_PATHS`` (``swift_plugin.getok_dataset``)
- the tuner ``getok_lora`` (``swift_plugin.getok_tuner``)
- the GRPO reward ORMs ``getok_grid``, ``getok_refine`` and one per component
  (``swift_plugin.getok_rewards``)
- the GRPO multi-turn scheduler ``getok_refine`` (``swift_plugin.getok_multiturn``)

Pass absolute paths: ms-swift saves them in args.json and ``swift infer --adapters CKPT`` /
``swift export`` replay them. docs/swift.md has the whole story.
"""

from swift_plugin import getok_dataset as _dataset
from swift_plugin import getok_model as _model
from swift_plugin import getok_multiturn as _multiturn
from swift_plugin import getok_rewards as _rewards
from swift_plugin import getok_template as _template
from swift_plugin import getok_tuner as _tuner

REGISTERED = {
    "model_types": _model.register(),
    "templates": _template.register(),
    "datasets": _dataset.register(),
    "tuners": _tuner.register(),
    "orms": _rewards.register(),
    "multi_turns": _multiturn.register(),
}

__all__ = ["REGISTERED"]
