"""helpers/support/varlen_attention.py on the CPU: the GQA wrapper against per-document causal attention, and
the enable / disable logic against stand-in unsloth modules (unsloth itself is never imported).

torch's real ``varlen_attn`` is a CUDA kernel, so a CPU stand-in with torch 2.11's signature (no
``enable_gqa``) plays it here; ``test_real_kernel_on_cuda`` runs the real one where there is a GPU.
"""

from __future__ import annotations

import inspect
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from helpers.support import varlen_attention as va


def reference_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                          window_size=(-1, -1)):
    """torch 2.11's varlen_attn signature, computed per segment with SDPA on the CPU; like the real
    one it decides causality by ``window_size == (-1, 0)``. Equal head counts only: grouped K/V is
    refused, as a kernel without GQA support would."""
    assert return_aux is None and cu_seq_q is cu_seq_k
    if key.shape[1] != query.shape[1]:
        raise RuntimeError("stand-in kernel: number of heads in key/value must equal query's")
    causal = window_size == (-1, 0)
    bounds = cu_seq_q.tolist()
    outs = [F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (query, key, value)),
                                           is_causal=causal, scale=scale).transpose(0, 1)
            for a, b in zip(bounds, bounds[1:], strict=False)]
    return torch.cat(outs)


def grouped_reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                      window_size=(-1, -1)):
    """The same stand-in, taking grouped K/V natively (SDPA's enable_gqa per segment)."""
    causal = window_size == (-1, 0)
    bounds = cu_seq_q.tolist()
    return torch.cat([F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (query, key, value)),
                                                     is_causal=causal, scale=scale, enable_gqa=True).transpose(0, 1)
                      for a, b in zip(bounds, bounds[1:], strict=False)])


def per_document_attention(query, key, value, lengths, scale=None):
    """Causal attention of each document alone, written out: query head h reads K/V head h // groups."""
    groups = query.shape[1] // key.shape[1]
    scale = scale or 1 / math.sqrt(query.shape[-1])
    out, start = [], 0
    for n in lengths:
        q, k, v = (t[start:start + n] for t in (query, key, value))
        heads = []
        for h in range(query.shape[1]):
            scores = (q[:, h] @ k[:, h // groups].T) * scale
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
            heads.append(scores.softmax(-1) @ v[:, h // groups])
        out.append(torch.stack(heads, 1))
        start += n
    return torch.cat(out)


def packed(lengths, n_heads, n_kv_heads, head_dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, head_dim, generator=gen, dtype=torch.float64)
               for h in (n_heads, n_kv_heads, n_kv_heads))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


@pytest.mark.parametrize(("native", "base"), [(False, reference_varlen_attn), (True, grouped_reference)])
@pytest.mark.parametrize(("n_heads", "n_kv_heads"), [(8, 2), (4, 4), (6, 1)])
def test_wrapper_matches_per_document_causal_attention(native, base, n_heads, n_kv_heads):
    lengths = [3, 7, 1, 5]
    q, k, v, cu = packed(lengths, n_heads, n_kv_heads)
    attn = va.gqa_varlen_attn(base, native_gqa=native)
    out = attn(q, k, v, cu, cu, max(lengths), max(lengths), scale=0.3, window_size=(-1, 0),
               enable_gqa=n_heads != n_kv_heads)
    assert out.shape == q.shape
    torch.testing.assert_close(out, per_document_attention(q, k, v, lengths, scale=0.3))
    assert attn.calls == 1 and attn.native_gqa is native and attn.base is base


def test_documents_do_not_see_each_other():
    """Changing the second document's keys and values leaves the first document's output unchanged."""
    q, k, v, cu = packed([4, 6], 8, 2)
    attn = va.gqa_varlen_attn(reference_varlen_attn, native_gqa=False)
    before = attn(q, k, v, cu, cu, 6, 6, window_size=(-1, 0), enable_gqa=True)
    k2, v2 = k.clone(), v.clone()
    k2[4:] = torch.randn_like(k2[4:])
    v2[4:] = torch.randn_like(v2[4:])
    after = attn(q, k2, v2, cu, cu, 6, 6, window_size=(-1, 0), enable_gqa=True)
    torch.testing.assert_close(after[:4], before[:4])
    assert not torch.allclose(after[4:], before[4:])


def test_window_size_as_a_list_still_means_causal():
    """torch 2.11 tests ``window_size == (-1, 0)``; the wrapper hands it a tuple whatever it got."""
    q, k, v, cu = packed([5, 3], 4, 2)
    attn = va.gqa_varlen_attn(reference_varlen_attn, native_gqa=False)
    out = attn(q, k, v, cu, cu, 5, 5, window_size=[-1, 0], enable_gqa=True)
    torch.testing.assert_close(out, per_document_attention(q, k, v, [5, 3]))


def test_gradients_of_repeated_heads_sum_back_to_the_kv_heads():
    lengths = [4, 3]
    q, k, v, cu = packed(lengths, 6, 2)
    grads = []
    for fn in (lambda q, k, v: va.gqa_varlen_attn(reference_varlen_attn, native_gqa=False)(
                   q, k, v, cu, cu, 4, 4, window_size=(-1, 0), enable_gqa=True),
               lambda q, k, v: per_document_attention(q, k, v, lengths)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        fn(*leaves).square().sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("heads", "kwargs", "message"), [
    ((6, 4, 4), {"enable_gqa": True}, "multiple of the key/value heads (4)"),
    ((8, 2, 2), {}, "pass enable_gqa=True"),
    ((8, 2, 4), {"enable_gqa": True}, "key has 2 heads but value has 4"),
])
def test_bad_head_counts_are_refused_clearly(heads, kwargs, message):
    n_heads, n_k, n_v = heads
    q, k, _, cu = packed([3, 3], n_heads, n_k)
    v = torch.zeros(6, n_v, 8, dtype=torch.float64)
    attn = va.gqa_varlen_attn(reference_varlen_attn, native_gqa=False)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        attn(q, k, v, cu, cu, 3, 3, window_size=(-1, 0), **kwargs)
    assert attn.calls == 0


def test_unpacked_tensors_are_refused():
    q = torch.zeros(1, 6, 4, 8)
    cu = torch.tensor([0, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="packed \\(tokens, heads, head_dim\\)"):
        va.gqa_varlen_attn(reference_varlen_attn, native_gqa=True)(q, q, q, cu, cu, 6, 6)


def test_probe_tells_a_grouped_kernel_from_one_that_refuses_it():
    ok, why = va.probe_native_gqa(grouped_reference, torch.device("cpu"))
    assert ok and "match" in why
    ok, why = va.probe_native_gqa(reference_varlen_attn, torch.device("cpu"))
    assert not ok and "refused" in why and "RuntimeError" in why

    def wrong_mapping(query, key, value, *args, **kwargs):  # pairs query head h with K/V head h % n_kv
        groups = query.shape[1] // key.shape[1]
        return reference_varlen_attn(query, key.repeat(1, groups, 1), value.repeat(1, groups, 1), *args, **kwargs)

    ok, why = va.probe_native_gqa(wrong_mapping, torch.device("cpu"))
    assert not ok and "differ" in why


# --- enable / disable against stand-in unsloth modules ------------------------------------------


def fake_dispatch(**attrs):
    module = types.ModuleType("fake_attention_dispatch")
    module._TORCH_VARLEN_ATTN = None
    module.HAS_FLASH_ATTENTION = False
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def enable(dispatch, **kwargs):
    settings = {"dispatch": dispatch, "varlen_attn": reference_varlen_attn, "cuda_available": True,
                "flash_attn_installed": False, "native_gqa": False, "capability": (9, 0), **kwargs}
    return va.enable_torch_varlen_for_unsloth(**settings)


@pytest.fixture(autouse=True)
def env_unset(monkeypatch):
    monkeypatch.delenv(va.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)


def test_enable_installs_the_wrapper_once_and_disable_restores():
    dispatch = fake_dispatch()
    first = enable(dispatch)
    assert first.startswith("enabled:") and "K/V heads repeated" in first
    hook = dispatch._TORCH_VARLEN_ATTN
    assert hook.cpt_gqa_wrapper and hook.base is reference_varlen_attn
    again = enable(dispatch, native_gqa=True)
    assert again.startswith("already enabled:") and dispatch._TORCH_VARLEN_ATTN is hook  # idempotent
    assert va.unsloth_attention_route(dispatch).startswith("torch varlen_attn via the GQA wrapper (0 eager")
    assert va.disable_torch_varlen_for_unsloth(dispatch=dispatch).startswith("disabled:")
    assert dispatch._TORCH_VARLEN_ATTN is None
    assert va.disable_torch_varlen_for_unsloth(dispatch=dispatch).startswith("nothing to disable")
    assert va.unsloth_attention_route(dispatch) == "SDPA per segment (one call per document)"


def test_context_manager_restores_even_after_an_error():
    dispatch = fake_dispatch()
    with pytest.raises(RuntimeError, match="training failed"):
        with va.torch_varlen_for_unsloth(dispatch=dispatch, varlen_attn=reference_varlen_attn, cuda_available=True,
                                         flash_attn_installed=False, native_gqa=True, capability=(8, 0)) as route:
            assert route.startswith("enabled:") and "grouped K/V passed through" in route
            assert dispatch._TORCH_VARLEN_ATTN.native_gqa is True
            raise RuntimeError("training failed")
    assert dispatch._TORCH_VARLEN_ATTN is None


def test_context_manager_leaves_an_earlier_enable_in_place():
    dispatch = fake_dispatch()
    enable(dispatch)
    hook = dispatch._TORCH_VARLEN_ATTN
    with va.torch_varlen_for_unsloth(dispatch=dispatch) as route:
        assert route.startswith("already enabled:")
    assert dispatch._TORCH_VARLEN_ATTN is hook


def test_does_nothing_and_says_why(monkeypatch):
    def signature_211_without_window(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None):
        raise AssertionError("never called")

    def signature_212(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                      window_size=(-1, -1), enable_gqa=False):
        raise AssertionError("never called")

    def own_kernel(*args, **kwargs):
        raise AssertionError("never called")

    cases = [
        (fake_dispatch(), {"cuda_available": False}, "no CUDA device"),
        (fake_dispatch(), {"capability": (7, 5)}, "compute capability 7.5, older than Ampere"),  # T4
        (fake_dispatch(), {"capability": (7, 0)}, "compute capability 7.0, older than Ampere"),  # V100
        (fake_dispatch(), {"flash_attn_installed": True}, "flash-attn is installed"),
        (fake_dispatch(), {"varlen_attn": signature_211_without_window}, "takes no window_size"),
        (fake_dispatch(), {"varlen_attn": signature_212}, "takes enable_gqa already"),
        (fake_dispatch(_TORCH_VARLEN_ATTN=own_kernel), {}, "unsloth already uses torch's varlen_attn"),
        (types.ModuleType("old_unsloth_dispatch"), {}, "has no unsloth.utils.attention_dispatch._TORCH_VARLEN_ATTN"),
    ]
    for dispatch, kwargs, reason in cases:
        before = getattr(dispatch, "_TORCH_VARLEN_ATTN", "absent")
        message = enable(dispatch, **kwargs)
        assert message.startswith("not enabled:") and reason in message, message
        assert getattr(dispatch, "_TORCH_VARLEN_ATTN", "absent") is before  # untouched

    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: False)
    dispatch = fake_dispatch()
    assert "without its flash-attention kernel" in enable(dispatch) and dispatch._TORCH_VARLEN_ATTN is None


def test_flash_attn_seen_by_unsloth_counts_as_installed():
    dispatch = fake_dispatch(HAS_FLASH_ATTENTION=True)
    message = enable(dispatch, flash_attn_installed=None)
    assert "flash-attn is installed" in message and dispatch._TORCH_VARLEN_ATTN is None
    assert va.unsloth_attention_route(dispatch) == "flash-attn varlen"


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_env_var_turns_it_off(monkeypatch, value):
    monkeypatch.setenv(va.ENV_VAR, value)
    dispatch = fake_dispatch()
    assert enable(dispatch) == f"not enabled: {va.ENV_VAR}={value}"
    assert dispatch._TORCH_VARLEN_ATTN is None


def test_without_unsloth_imported_it_says_so(monkeypatch):
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    assert va.enable_torch_varlen_for_unsloth() == \
        "not enabled: unsloth is not imported (call this after `import unsloth`)"
    assert va.disable_torch_varlen_for_unsloth().startswith("nothing to disable")
    assert va.unsloth_attention_route().startswith("unknown:")


def test_found_through_sys_modules_when_unsloth_is_imported(monkeypatch):
    """With (stand-in) unsloth imported, the default lookup finds its dispatch module."""
    dispatch = fake_dispatch()
    monkeypatch.setitem(sys.modules, "unsloth", types.ModuleType("unsloth"))
    monkeypatch.setitem(sys.modules, va.DISPATCH_MODULE, dispatch)
    message = va.enable_torch_varlen_for_unsloth(varlen_attn=reference_varlen_attn, cuda_available=True,
                                                 flash_attn_installed=False, native_gqa=False, capability=(9, 0))
    assert message.startswith("enabled:") and dispatch._TORCH_VARLEN_ATTN.cpt_gqa_wrapper
    assert va.disable_torch_varlen_for_unsloth().startswith("disabled:") and dispatch._TORCH_VARLEN_ATTN is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's varlen_attn needs a CUDA GPU")
def test_real_kernel_on_cuda():
    """The real kernel, bf16, Mistral-7B's heads (32 query, 8 K/V, head_dim 128): both GQA routes
    match per-document causal SDPA in output and gradients."""
    from torch.nn.attention.varlen import varlen_attn

    lengths = [300, 17, 1000, 731]
    gen = torch.Generator().manual_seed(0)
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, 128, generator=gen).cuda().bfloat16() for h in (32, 8, 8))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    grad = torch.randn(total, 32, 128, generator=gen).cuda().bfloat16()

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        out.backward(grad)
        return [out.float(), *(t.grad.float() for t in leaves)]

    def sdpa(q, k, v):
        bounds = cu.tolist()
        return torch.cat([F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1).unsqueeze(0) for t in (q, k, v)),
                                                         is_causal=True, enable_gqa=True)[0].transpose(0, 1)
                          for a, b in zip(bounds, bounds[1:], strict=False)])

    want = run(sdpa)
    native_ok, why = va.probe_native_gqa(varlen_attn, torch.device("cuda"))
    routes = [False] + ([True] if "enable_gqa" not in inspect.signature(varlen_attn).parameters else [])
    for native in routes:
        attn = va.gqa_varlen_attn(varlen_attn, native_gqa=native)
        got = run(lambda q, k, v, attn=attn: attn(q, k, v, cu, cu, max(lengths), max(lengths), window_size=(-1, 0),
                                                  enable_gqa=True))
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=3e-2, rtol=3e-2)
    print("native GQA probe:", native_ok, why)
