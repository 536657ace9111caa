"""helpers.lab.throughput: token counting, the steady-state window, MFU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from helpers.lab import throughput

# config.json of mistralai/Mistral-7B-v0.3 (the fields N depends on)
MISTRAL_7B = SimpleNamespace(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                             head_dim=128, intermediate_size=14336, vocab_size=32768)


def test_count_tokens_counts_the_micro_batches_trained(torch_one_thread):
    torch = torch_one_thread

    class Model(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, labels=None):
            return input_ids

    model = Model()
    counts = throughput.count_tokens(model)
    model(input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    model(torch.ones(1, 7, dtype=torch.long))  # padding-free: one flattened row, no mask
    # packed rows with a 4-D mask of which token sees which (PackedRowsCollator): no padding
    model(input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 1, 3, 3, dtype=torch.bool))
    model.eval()
    model(input_ids=torch.ones(1, 3, dtype=torch.long))  # evaluation: not counted
    model.train()
    counts.stop()
    model(input_ids=torch.ones(1, 5, dtype=torch.long))  # after stop(): not counted
    assert counts.real == [6, 7, 6] and counts.processed == [8, 7, 6] and len(counts) == 3


def clock_with(step_times: list[float], micro_batches_per_step: int = 2, start_step: int = 0) -> throughput.StepClock:
    clock = throughput.StepClock()
    clock.begin, clock.start_step = 0.0, start_step
    clock.steps = [(start_step + i + 1, t, (i + 1) * micro_batches_per_step) for i, t in enumerate(step_times)]
    return clock


def test_steady_state_leaves_out_the_first_two_steps():
    clock = clock_with([5.0, 6.0, 7.0, 8.5])  # step 1 slow (warm-up), then 1.0, 1.0, 1.5 s
    tokens = [10, 10, 10, 10, 20, 20, 30, 30]  # per micro-batch, two per step
    steady = throughput.steady_state(clock, tokens)
    assert steady["steady"] is True and steady["steps"] == 2
    assert (steady["first_step"], steady["last_step"]) == (3, 4)
    assert steady["tokens"] == 20 + 20 + 30 + 30 and steady["seconds"] == pytest.approx(2.5)
    assert steady["tokens_all"] == sum(tokens)
    assert clock.step_seconds() == pytest.approx([5.0, 1.0, 1.0, 1.5])


def test_steady_state_with_too_few_steps_counts_them_all_and_says_so():
    steady = throughput.steady_state(clock_with([2.0, 3.0], start_step=4), [5, 5, 5, 5])
    assert steady["steady"] is False and steady["steps"] == 2 and steady["tokens"] == 20
    assert steady["seconds"] == 3.0 and steady["first_step"] == 5
    empty = throughput.steady_state(throughput.StepClock(), [])
    assert empty["tokens"] == 0 and empty["steps"] == 0 and empty["steady"] is False


def test_matmul_parameters_of_mistral_7b():
    assert throughput.matmul_parameters(MISTRAL_7B) == 7_113_539_584  # benchmarks/RESULTS.md's N


def test_peak_and_mfu():
    assert throughput.peak_tflops("NVIDIA H200") == 989.4
    assert throughput.peak_tflops("NVIDIA H100 PCIe") == 756.0  # the PCIe card before the SXM name
    assert throughput.peak_tflops("cpu") is None and throughput.peak_tflops(None) is None
    # benchmarks/RESULTS.md, 2026-11-27: 9,586.3 tokens/s on an H200 -> MFU 0.4135
    assert throughput.mfu(9586.3, 7_113_539_584, 989.4) == pytest.approx(0.4135, abs=1e-4)
    assert throughput.mfu(100.0, 10, None) is None and throughput.mfu(float("nan"), 10, 1.0) is None
