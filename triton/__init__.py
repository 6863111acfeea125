"""This folder holds the Triton Inference Server deployment scripts; it is not OpenAI's Triton compiler.

Because the repository root is on `sys.path` whenever a top-level script runs, a bare `triton/` folder
would be picked up as the `triton` package and break `torch.compile` / `torch._dynamo`, which probe for
the compiler with `import triton`. Importing this folder as a package therefore hands over to the real
compiler package when one is installed elsewhere on `sys.path`, and raises ImportError otherwise.
The scripts in this folder are run as files (`python triton/export.py ...`), never imported as `triton.*`.
"""
import importlib.machinery as _machinery
import importlib.util as _util
import os as _os
import sys as _sys

_REPO_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))


def _find_real_triton():
    for entry in _sys.path:
        if _os.path.abspath(entry or _os.getcwd()) == _REPO_ROOT:
            continue
        spec = _machinery.PathFinder.find_spec("triton", [entry])
        if spec is not None and spec.origin not in (None, __file__):
            return spec
    return None


_spec = _find_real_triton()
if _spec is None:
    raise ImportError("the Triton compiler is not installed (the repository's triton/ folder holds serving scripts)")
_real = _util.module_from_spec(_spec)
_sys.modules["triton"] = _real
_spec.loader.exec_module(_real)
