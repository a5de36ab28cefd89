"""Compatibility for Triton's CPU interpreter (``TRITON_INTERPRET=1``), shared by every kernel here."""

from __future__ import annotations

import os


def patch_interpreter_for_numpy2() -> None:
    """Let Triton's CPU interpreter use run-time loop bounds under NumPy >= 2.4.

    The interpreter (Triton 3.6) holds scalars as 1-element arrays and implements ``__index__`` as
    ``int(array)``, which NumPy 2.4 rejects for 1-d arrays, so ``range(0, n)`` with a computed ``n``
    fails. Wrap its tensor patcher so ``__index__`` takes the first element. Idempotent; a no-op unless
    interpreting.
    """
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_sta_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._sta_patched = True
    interpreter._patch_lang_tensor = patched
