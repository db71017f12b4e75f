"""getok_core must import, and work, where no training framework (or torch) is installed."""

import subprocess
import sys
import textwrap

BLOCKED = ["torch", "torchvision", "swift", "verl", "transformers", "ray", "vllm", "trl", "peft",
           "segment_anything", "sam2", "accelerate", "deepspeed"]


def test_getok_core_imports_without_frameworks():
    code = textwrap.dedent(f"""
        import importlib, importlib.abc, pkgutil, sys
        BLOCKED = {BLOCKED!r}

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked for this test: {{name}}")
                return None

        sys.meta_path.insert(0, Blocker())
        import getok_core
        for mod in pkgutil.walk_packages(getok_core.__path__, "getok_core."):
            importlib.import_module(mod.name)
        from getok_core import GetokVocab, Instance, format_answer, parse_answer
        vocab = GetokVocab()
        text = format_answer([Instance(box=(0.1, 0.1, 0.5, 0.5), points=[(0.2, 0.3)])], vocab)
        assert parse_answer(text, vocab).valid
        from getok_core.cli import main
        assert main(["encode", "--point", "0.5,0.5"]) == 0
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("isolated-ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "isolated-ok" in out.stdout
