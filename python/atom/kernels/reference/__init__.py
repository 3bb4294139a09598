"""Torch reference of every op: the definition the fast kernels are tested against, and the
implementation used where no faster one is available. Registered as backend ``torch``."""

from atom.kernels.reference import activation, attention, cache, gemv, mla, moe, norm, rotary  # noqa: F401
