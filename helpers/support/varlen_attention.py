"""Give unsloth's packed attention torch's variable-length flash kernel on torch 2.11.

Packing (and padding-free) training puts several documents in one row, and each document must only
attend to itself. With the ``flash-attn`` package, unsloth runs such a row through flash-attn's
``varlen`` kernel in one call. Without it (and without xformers) unsloth falls back to torch's own
``torch.nn.attention.varlen.varlen_attn``, but only if that function takes both ``window_size``
(torch 2.11) and ``enable_gqa`` (torch 2.12). On torch 2.11 it therefore runs one
``scaled_dot_product_attention`` call per document ("per-segment" SDPA), which is what makes packing
slow there.

torch 2.11's ``varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None,
scale=None, window_size=(-1, -1))`` lacks only the ``enable_gqa`` keyword. Its op hands the tensors
straight to ``aten._flash_attention_forward`` / ``_flash_attention_backward``, flash-attention 2's
varlen kernel, which itself accepts fewer key/value heads than query heads when the query heads
are a multiple of them. :func:`gqa_varlen_attn` wraps it in the 2.12 signature, either passing
grouped K/V through (``native_gqa=True``) or repeating each K/V head ``n_heads // n_kv_heads`` times
first, which maps query head ``h`` to K/V head ``h // (n_heads // n_kv_heads)``, the same mapping
as ``scaled_dot_product_attention(..., enable_gqa=True)``.

:func:`enable_torch_varlen_for_unsloth` installs that wrapper where unsloth looks for the kernel
(``unsloth.utils.attention_dispatch._TORCH_VARLEN_ATTN``, read at call time), after checking that
the swap is needed and possible; :func:`torch_varlen_for_unsloth` does it for the length of a
``with`` block and puts the previous value back. ``CPT_TORCH_VARLEN=0`` turns it off.

Only unsloth's own attention (the fast Llama / Mistral forward that calls ``run_attention``) reads
that global; models unsloth routes through transformers' attention interface use unsloth's
``hf_packed_attention``, which already expands K/V for torch 2.11 by itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

ENV_VAR = "CPT_TORCH_VARLEN"
OFF_VALUES = ("0", "false", "no", "off")
DISPATCH_MODULE = "unsloth.utils.attention_dispatch"
HOOK = "_TORCH_VARLEN_ATTN"

# What enable_torch_varlen_for_unsloth replaced, keyed by id(dispatch module): restored by
# disable_torch_varlen_for_unsloth.
_PREVIOUS: dict[int, object] = {}


def gqa_varlen_attn(base: Callable, *, native_gqa: bool) -> Callable:
    """Return ``varlen_attn`` with torch 2.12's signature (``enable_gqa`` added) that calls ``base``,
    a torch 2.11 ``varlen_attn`` (same arguments without ``enable_gqa``).

    ``query`` is ``(total_q, n_heads, head_dim)``, ``key`` / ``value`` ``(total_k, n_kv_heads,
    head_dim)``. With ``n_kv_heads < n_heads`` the caller must pass ``enable_gqa=True`` (as with
    SDPA), and ``n_heads`` must be a multiple of ``n_kv_heads``; then ``native_gqa=True`` passes the
    grouped K/V to ``base`` as they are and ``native_gqa=False`` repeats each K/V head
    ``n_heads // n_kv_heads`` times first (the backward sums the repeats' gradients back). The
    returned function counts its eager calls in ``.calls`` (calls traced by ``torch.compile`` are
    not counted) and carries ``.base`` and ``.native_gqa``.
    """

    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1), enable_gqa=False):
        import torch  # deferred: heavy

        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
            raise ValueError("varlen_attn takes packed (tokens, heads, head_dim) tensors; got query "
                             f"{tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}")
        n_heads, n_kv_heads = query.shape[1], key.shape[1]
        if value.shape[1] != n_kv_heads:
            raise ValueError(f"key has {n_kv_heads} heads but value has {value.shape[1]}; they must match")
        if n_kv_heads != n_heads:
            if not enable_gqa:
                raise ValueError(f"query has {n_heads} heads but key/value have {n_kv_heads}: pass "
                                 "enable_gqa=True for grouped-query attention")
            if n_kv_heads == 0 or n_heads % n_kv_heads:
                raise ValueError(f"grouped-query attention needs the query heads ({n_heads}) to be a "
                                 f"multiple of the key/value heads ({n_kv_heads})")
            if not native_gqa:
                groups = n_heads // n_kv_heads
                key = key.repeat_interleave(groups, dim=1)
                value = value.repeat_interleave(groups, dim=1)
        if not torch.compiler.is_compiling():
            varlen_attn.calls += 1
        # 2.11 decides causality by `window_size == (-1, 0)`: a list would silently mean "not causal".
        return base(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, return_aux=return_aux, scale=scale,
                    window_size=tuple(window_size))

    varlen_attn.calls = 0
    varlen_attn.base = base
    varlen_attn.native_gqa = native_gqa
    varlen_attn.cpt_gqa_wrapper = True
    return varlen_attn


def probe_native_gqa(base: Callable, device) -> tuple[bool, str]:
    """Run ``base`` (torch 2.11's ``varlen_attn``) on small random bf16 rows on ``device`` with grouped
    K/V and with K/V repeated, and return ``(True, why)`` when both give the same output and
    gradients, else ``(False, why)`` (an error or a mismatch: the wrapper then repeats K/V)."""
    import torch  # deferred: heavy

    gen = torch.Generator(device="cpu").manual_seed(0)
    lengths, n_heads, n_kv_heads, head_dim = (5, 11, 16), 8, 2, 64
    total = sum(lengths)
    cu = torch.tensor([0, 5, 16, 32], dtype=torch.int32, device=device)

    def tensors():
        q, k, v = (torch.randn(total, h, head_dim, generator=gen).to(device, torch.bfloat16)
                   for h in (n_heads, n_kv_heads, n_kv_heads))
        return [t.requires_grad_() for t in (q, k, v)]

    q, k, v = tensors()
    grad = torch.randn(total, n_heads, head_dim, generator=gen).to(device, torch.bfloat16)
    results = []
    try:
        for native in (True, False):
            leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
            out = gqa_varlen_attn(base, native_gqa=native)(*leaves, cu, cu, max(lengths), max(lengths),
                                                          window_size=(-1, 0), enable_gqa=True)
            out.backward(grad)
            results.append([out.float(), *(t.grad.float() for t in leaves)])
    except Exception as err:  # the kernel refused grouped K/V: expand instead
        return False, f"grouped K/V refused ({type(err).__name__}: {str(err)[:120]})"
    # bf16 rounding: each tensor's largest difference relative to its largest entry
    worst = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item() for a, b in zip(*results, strict=True))
    if worst > 2e-2:
        return False, f"grouped K/V differ from repeated K/V (relative {worst:.3g})"
    return True, f"grouped K/V match repeated K/V (relative diff {worst:.2g}, forward and backward)"


MIN_CAPABILITY = (8, 0)  # flash attention: Ampere (A100, A10, L4, RTX 30xx) or newer


def capability_refusal(capability: tuple[int, int]) -> str | None:
    """Return why torch's varlen kernel cannot serve a GPU of this compute capability (a T4 is 7.5, a
    V100 7.0), or None when it can (8.0 or newer)."""
    if tuple(capability) >= MIN_CAPABILITY:
        return None
    major, minor = capability
    return (f"this GPU has compute capability {major}.{minor}, older than Ampere (8.0), and torch's varlen_attn is "
            "a flash-attention kernel that needs 8.0 or newer")


def planned_route(capability: tuple[int, int], flash_attn_installed: bool | None = None,
                  varlen_attn: Callable | None = None) -> str:
    """Return, before unsloth is imported, the route its packed attention will take on a GPU of this
    compute capability with this torch: flash-attn's varlen kernel (when installed), torch's
    ``varlen_attn`` (through :func:`enable_torch_varlen_for_unsloth` on torch 2.11, by unsloth itself
    from 2.12), or the fallback, unsloth's own route (before compute capability 8.0, or a torch
    without ``varlen_attn``). ``flash_attn_installed`` and ``varlen_attn`` replace the look-ups (tests)."""
    fallback = "fallback: unsloth's own route (xformers when installed, else one SDPA call per story)"
    if flash_attn_installed is None:
        flash_attn_installed = importlib.util.find_spec("flash_attn") is not None
    if flash_attn_installed and tuple(capability) >= MIN_CAPABILITY:
        return "flash-attn's varlen kernel (flash-attn is installed)"
    refusal = capability_refusal(capability)
    if refusal:
        return f"{fallback}: {refusal}"
    if varlen_attn is None:
        try:
            varlen_attn = _default_varlen_attn()
        except Exception:
            varlen_attn = None
    params = inspect.signature(varlen_attn).parameters if varlen_attn is not None else {}
    if "window_size" not in params:
        return f"{fallback}: this torch has no varlen_attn that takes window_size (torch 2.11 or newer has)"
    if "enable_gqa" in params:
        return "torch's varlen_attn, which unsloth calls by itself on this torch (2.12 or newer)"
    if _off():
        return f"unsloth's own route ({ENV_VAR}={os.environ[ENV_VAR]} turns the varlen swap off)"
    return "torch's varlen_attn via the GQA wrapper, one call per packed row (helpers.support.varlen_attention)"


def _off() -> bool:
    from .paths import read_switch

    return not read_switch(ENV_VAR, True)  # ValueError for a value that is not yes/no


def _dispatch_module() -> ModuleType | None:
    if "unsloth" not in sys.modules:
        return None
    return sys.modules.get(DISPATCH_MODULE) or importlib.import_module(DISPATCH_MODULE)


def _default_varlen_attn():
    from torch.nn.attention.varlen import varlen_attn  # deferred: heavy

    return varlen_attn


def enable_torch_varlen_for_unsloth(*, dispatch: ModuleType | None = None, varlen_attn: Callable | None = None,
                                    cuda_available: bool | None = None, flash_attn_installed: bool | None = None,
                                    native_gqa: bool | None = None,
                                    capability: tuple[int, int] | None = None) -> str:
    """Make unsloth's packed / padding-free attention call torch 2.11's ``varlen_attn`` (through
    :func:`gqa_varlen_attn`) instead of one SDPA call per document. Call it after ``import unsloth``
    and before training. Idempotent.

    Returns one line saying what it did (``"enabled: ..."``, ``"already enabled: ..."``) or why it
    did nothing (``"not enabled: ..."``): ``CPT_TORCH_VARLEN=0``, unsloth not imported, unsloth
    already using torch's kernel or flash-attn, no CUDA, a GPU older than Ampere (torch's
    ``varlen_attn`` is a flash-attention kernel, which needs compute capability 8.0: a T4 is 7.5, a
    V100 7.0), no ``varlen_attn`` / no ``window_size`` in this torch, no flash kernel in this build.
    The keyword arguments replace what it would otherwise look up (for tests): the dispatch module,
    torch's ``varlen_attn``, CUDA and flash-attn presence, the GPU's compute capability, and whether
    the kernel takes grouped K/V (None: probe it on the GPU with :func:`probe_native_gqa`).
    """
    if _off():
        return f"not enabled: {ENV_VAR}={os.environ[ENV_VAR]}"
    if dispatch is None:
        dispatch = _dispatch_module()
        if dispatch is None:
            return "not enabled: unsloth is not imported (call this after `import unsloth`)"
    if not hasattr(dispatch, HOOK):
        return f"not enabled: this unsloth has no {DISPATCH_MODULE}.{HOOK} to set"
    current = getattr(dispatch, HOOK)
    if getattr(current, "cpt_gqa_wrapper", False):
        how = "grouped K/V passed through" if current.native_gqa else "K/V heads repeated"
        return f"already enabled: torch varlen_attn via the GQA wrapper ({how})"
    if current is not None:
        return f"not enabled: unsloth already uses torch's varlen_attn ({getattr(current, '__module__', '?')})"
    if flash_attn_installed is None:
        flash_attn_installed = bool(getattr(dispatch, "HAS_FLASH_ATTENTION", False)) or \
            importlib.util.find_spec("flash_attn") is not None
    if flash_attn_installed:
        return "not enabled: flash-attn is installed, so unsloth uses its varlen kernel"
    import torch  # deferred: heavy

    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        return "not enabled: no CUDA device (torch's varlen_attn is a CUDA kernel)"
    if capability is None:  # (a CUDA device told present by a test, on a machine without one, counts as able)
        capability = tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else MIN_CAPABILITY
    refusal = capability_refusal(capability)
    if refusal:
        return f"not enabled: {refusal}; unsloth keeps its own route"
    if varlen_attn is None:
        try:
            varlen_attn = _default_varlen_attn()
        except Exception as err:
            return f"not enabled: torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn ({err})"
    params = inspect.signature(varlen_attn).parameters
    if "window_size" not in params or "scale" not in params:
        return f"not enabled: torch {torch.__version__}'s varlen_attn takes no window_size / scale (needs torch 2.11)"
    if "enable_gqa" in params:
        return (f"not enabled: torch {torch.__version__}'s varlen_attn takes enable_gqa already, yet unsloth left "
                f"{HOOK} unset (UNSLOTH_TORCH_VARLEN=0, or no flash kernel in this torch build)")
    if not getattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)():
        return f"not enabled: torch {torch.__version__} was built without its flash-attention kernel"
    why = "told"
    if native_gqa is None:
        native_gqa, why = probe_native_gqa(varlen_attn, torch.device("cuda", torch.cuda.current_device()))
    _PREVIOUS[id(dispatch)] = current
    wrapper = gqa_varlen_attn(varlen_attn, native_gqa=native_gqa)
    setattr(dispatch, HOOK, wrapper)
    how = "grouped K/V passed through" if native_gqa else "K/V heads repeated"
    return (f"enabled: unsloth's packed attention calls torch {torch.__version__}'s varlen_attn via the GQA "
            f"wrapper ({how}; {why})")


def disable_torch_varlen_for_unsloth(*, dispatch: ModuleType | None = None) -> str:
    """Put back what :func:`enable_torch_varlen_for_unsloth` replaced. Returns one line saying what it
    did; does nothing (and says so) when the wrapper is not installed."""
    if dispatch is None:
        dispatch = _dispatch_module()
    if dispatch is None or not getattr(getattr(dispatch, HOOK, None), "cpt_gqa_wrapper", False):
        return "nothing to disable: the GQA varlen wrapper is not installed"
    setattr(dispatch, HOOK, _PREVIOUS.pop(id(dispatch), None))
    return "disabled: unsloth's packed attention is back to its own route"


@contextlib.contextmanager
def torch_varlen_for_unsloth(**kwargs) -> Iterator[str]:
    """``with torch_varlen_for_unsloth() as route:`` enables the wrapper (see
    :func:`enable_torch_varlen_for_unsloth`, which takes the same keyword arguments) for the block
    and yields its one-line description; on leaving, even by an exception, it disables it again if
    this block installed it (an already-enabled wrapper stays)."""
    route = enable_torch_varlen_for_unsloth(**kwargs)
    try:
        yield route
    finally:
        if route.startswith("enabled:"):
            disable_torch_varlen_for_unsloth(dispatch=kwargs.get("dispatch"))


def wrapper_calls(dispatch: ModuleType | None = None) -> int | None:
    """Return how many eager calls the installed GQA wrapper has served, or None when it is not
    installed (or unsloth is not imported)."""
    if dispatch is None:
        dispatch = _dispatch_module()
    hook = getattr(dispatch, HOOK, None) if dispatch is not None else None
    return hook.calls if getattr(hook, "cpt_gqa_wrapper", False) else None


def unsloth_attention_route(dispatch: ModuleType | None = None) -> str:
    """Return one line naming the kernel unsloth's packed attention uses now (call it after ``import
    unsloth``): flash-attn's varlen, torch's varlen_attn (unsloth's own or via the GQA wrapper, with
    its eager call count), or one SDPA call per document."""
    if dispatch is None:
        dispatch = _dispatch_module()
    if dispatch is None or not hasattr(dispatch, HOOK):
        return "unknown: unsloth's attention dispatch is not loaded"
    if getattr(dispatch, "HAS_FLASH_ATTENTION", False):
        return "flash-attn varlen"
    hook = getattr(dispatch, HOOK)
    if getattr(hook, "cpt_gqa_wrapper", False):
        return f"torch varlen_attn via the GQA wrapper ({hook.calls} eager calls so far)"
    if hook is not None:
        return "torch varlen_attn (unsloth's own)"
    return "SDPA per segment (one call per document)"
