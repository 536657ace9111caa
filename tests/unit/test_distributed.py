"""helpers.lab.distributed: the batch split, model placement under a launcher, the sync check and the
run comparison, in one process (the multi-process runs are in tests/e2e/test_train_script.py)."""

from __future__ import annotations

import pytest

from helpers.lab import distributed
from helpers.profiles import GPU_SMOKE


@pytest.mark.parametrize(
    ("per_device", "accum", "world", "expected_accum", "kept"),
    [(2, 8, 1, 8, True), (2, 8, 2, 4, True), (2, 8, 4, 2, True), (2, 8, 8, 1, True), (2, 3, 2, 2, False),
     (2, 1, 4, 1, False)],
)
def test_batch_policy_keeps_the_global_batch_when_it_can(per_device, accum, world, expected_accum, kept):
    policy = distributed.batch_policy(per_device, accum, world)
    assert policy["grad_accum"] == expected_accum and policy["kept"] is kept
    assert policy["global_batch"] == per_device * expected_accum * world
    assert policy["reference_global_batch"] == per_device * accum
    if kept:
        assert policy["global_batch"] == per_device * accum


@pytest.mark.parametrize("sizes", [(0, 8, 1), (2, 0, 1), (2, 8, 0)])
def test_batch_policy_refuses_sizes_below_one(sizes):
    with pytest.raises(ValueError, match="at least 1"):
        distributed.batch_policy(*sizes)


def test_plain_branch_loads_on_the_local_rank_under_a_launcher(torch_one_thread, monkeypatch):
    """helpers.modeling asks for device_map={"": 0}; under DDP rank 1 must get its own GPU."""
    from transformers import AutoModelForCausalLM

    seen = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: seen.append(k.get("device_map")))
    cuda_plain = GPU_SMOKE.replace(backend="transformers")
    with distributed.load_on_local_device(cuda_plain, local_rank=1, distributed=True):
        AutoModelForCausalLM.from_pretrained("x", device_map={"": 0})
    AutoModelForCausalLM.from_pretrained("x", device_map={"": 0})  # restored afterwards
    with distributed.load_on_local_device(cuda_plain, local_rank=1, distributed=False):  # one process: untouched
        AutoModelForCausalLM.from_pretrained("x", device_map={"": 0})
    with distributed.load_on_local_device(GPU_SMOKE, local_rank=1, distributed=True):
        AutoModelForCausalLM.from_pretrained("x", device_map={"": 0})  # unsloth pins the rank itself
    assert seen == [{"": 1}, {"": 0}, {"": 0}, {"": 0}]


def test_the_real_loader_comes_back_as_a_classmethod(torch_one_thread):
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.__dict__.get("from_pretrained")
    with distributed.load_on_local_device(GPU_SMOKE.replace(backend="transformers"), local_rank=1, distributed=True):
        assert AutoModelForCausalLM.__dict__.get("from_pretrained") is not before
    assert AutoModelForCausalLM.__dict__.get("from_pretrained") is before


def test_digest_sees_every_trainable_byte_and_only_those(torch_one_thread):
    torch = torch_one_thread
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].weight.requires_grad_(False)
    first = distributed.trainable_digest(model)
    assert first["parameters"] == 3 * 2 + 2 + 1  # the frozen 2x1 weight is left out
    with torch.no_grad():
        model[1].weight.add_(1.0)  # frozen: no change in the digest
    assert distributed.trainable_digest(model) == first
    with torch.no_grad():
        model[0].bias[0] += 1e-7
    assert distributed.trainable_digest(model)["sha256"] != first["sha256"]


def test_one_process_sync_check_and_sums(torch_one_thread):
    model = torch_one_thread.nn.Linear(2, 2)
    summary = distributed.check_sync(model, "now")
    assert summary["ranks"] == 1 and summary["identical"] is True and summary["when"] == "now"
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.sum_over_ranks(7) == 7.0


def test_compare_runs_flags_loss_drift_batch_changes_and_misses():
    one = {"gpus": 1, "tokens_per_s": 100.0, "global_batch": 8, "final_loss": 10.0, "losses": [10.5, 10.0]}
    two = {**one, "gpus": 2, "tokens_per_s": 186.0, "losses": [10.5, 10.05], "final_loss": 10.05}
    summary = distributed.compare_runs(one, two)
    assert summary["speedup"] == 1.86 and summary["scaling_efficiency"] == 0.93
    assert summary["target_efficiency"] == 0.925 and summary["target_met"] is True
    assert summary["loss_match"] is True and summary["final_loss_abs_diff"] == pytest.approx(0.05)
    assert distributed.compare_runs(one, {**two, "losses": [10.5, 10.2]})["loss_match"] is False  # 2% off
    assert distributed.compare_runs(one, {**two, "global_batch": 16})["loss_match"] is False  # not the same run
    assert distributed.compare_runs(one, {**two, "losses": []})["loss_match"] is False  # nothing to compare
    assert distributed.compare_runs(one, {**two, "tokens_per_s": 180.0})["target_met"] is False  # 1.8x < 1.85x
    four = distributed.compare_runs(one, {**two, "gpus": 4, "tokens_per_s": 350.0})
    assert four["target_efficiency"] == 0.875 and four["target_met"] is True  # 3.5x on 4


def test_plain_cpu_map_location_only_rewrites_indexed_cpu_devices(torch_one_thread, tmp_path):
    torch = torch_one_thread
    path = tmp_path / "t.pt"
    torch.save({"x": torch.ones(2)}, path)
    with pytest.raises(RuntimeError, match="cpu:0"):  # the failure a resumed multi-process CPU run hits
        torch.load(path, map_location=torch.device("cpu", 0))
    with distributed.plain_cpu_map_location(True):
        assert torch.load(path, map_location=torch.device("cpu", 0))["x"].sum() == 2
    with distributed.plain_cpu_map_location(False), pytest.raises(RuntimeError, match="cpu:0"):
        torch.load(path, map_location=torch.device("cpu", 0))
    assert torch.load.__module__ == "torch.serialization"  # restored
