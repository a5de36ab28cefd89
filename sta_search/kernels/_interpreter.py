"""Compatibility for Triton's CPU interpreter (``TRITON_INTERPRET=1``), shared by every kernel here.

Only the interpreter is patched: nothing here changes what a kernel compiles to on a GPU.
"""

from __future__ import annotations

import os

import numpy as np


def patch_interpreter() -> None:
    """Make Triton's CPU interpreter (3.6 to 3.9) run the kernels here. Idempotent; a no-op unless interpreting.

    - Run-time loop bounds under NumPy >= 2.4: the interpreter holds scalars as 1-element arrays and
      Triton 3.6 implements ``__index__`` as ``int(array)``, which NumPy 2.4 rejects for 1-d arrays, so
      ``range(0, n)`` with a computed ``n`` fails; ``__index__`` takes the first element instead.
    - Load/store masks as bool: the interpreter labels a comparison's result with its operands' dtype
      (``pid >= n`` is an "int32" scalar), so splatting a scalar condition makes int32 data, and
      ``mask | scalar_condition`` is an int32 array. Triton <= 3.6 accepted such masks; from Triton 3.7 on,
      the interpreter's C++ load/store reject every mask that is not a NumPy bool array ("mask has
      unsupported dtype"). The masks only ever hold 0 and 1, so they are converted to bool before the call.
    """
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if not getattr(original, "_sta_patched", False):
        def patched(tensor, scope):
            original(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

        patched._sta_patched = True
        interpreter._patch_lang_tensor = patched

    builder = interpreter.InterpreterBuilder
    load, store = builder.create_masked_load, builder.create_masked_store
    if getattr(load, "_sta_patched", False):
        return

    def masked_load(self, ptrs, mask, *rest, **options):  # rest: other, then cache/eviction/volatile by version
        return load(self, ptrs, _bool_mask(interpreter, mask), *rest, **options)

    def masked_store(self, ptrs, value, mask, *rest, **options):
        return store(self, ptrs, value, _bool_mask(interpreter, mask), *rest, **options)

    masked_load._sta_patched = masked_store._sta_patched = True
    builder.create_masked_load, builder.create_masked_store = masked_load, masked_store


def _bool_mask(interpreter, mask):
    if isinstance(mask, np.ndarray):  # descriptor loads of Triton <= 3.8 pass a bare array
        return mask if mask.dtype == np.bool_ else mask != 0
    if mask is None or mask.data.dtype == np.bool_:
        return mask
    return interpreter.TensorHandle(mask.data != 0, mask.dtype)
