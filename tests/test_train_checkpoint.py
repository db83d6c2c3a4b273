"""checkpoint.pt on its own: a restored checkpoint continues exactly as the run it was taken
from (networks, optimisers, LR schedulers, the image pools and their generator, torch's and the
data generator's RNG, the epoch under way); a checkpoint of another run or past the asked
epochs is not resumed; a failed write says what is left; the fingerprint ignores only the knobs
that change neither the numbers nor the schedule."""
from __future__ import annotations

import errno
import logging
import os

import pytest
import torch

import pipeline.engine.checkpoint
from pipeline.engine.checkpoint import Checkpoint, EpochInProgress, Progress, resume_fingerprint
from pipeline.engine.data import BatchSampler
from pipeline.engine.knobs import TRAIN_DEFAULTS, resolve_config
from pipeline.engine.step import lr_schedulers, train_step
from pipeline.errors import InputDataError, PipelineError

CPU = torch.device("cpu")
#: The classic CycleGAN: image pools with their own generator, a 2:1 update ratio, LR decay.
MODEL = {"variant": "resnet9_patchgan", "ngf": 4, "ndf": 4, "n_res_blocks": 1, "pool_size": 3,
         "g_steps_per_d_step": 2, "pretrained": "none"}
#: The train knobs a resumed run may change (docs/engine.md): how long, how often it writes, where
#: and how fast it runs; every other knob changes the numbers or the schedule.
RESUME_NEUTRAL = {"epochs", "kimg", "checkpoint_every", "sample_every", "n_samples", "device", "compile",
                  "compile_mode", "distributed", "gpus", "progress_interval_s"}


def build(seed: int):
    """A model, its LR schedulers and a data generator as a fresh process builds them."""
    cls, model_cfg, _ = resolve_config({"model": MODEL})
    torch.manual_seed(seed)
    model = cls(model_cfg, None, seed)
    return model, lr_schedulers(model.optimizers, constant_epochs=1, decay_epochs=2), torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def sampler():
    images = torch.Generator().manual_seed(0)
    data = {d: torch.rand(6, 1, 32, 32, generator=images) * 2 - 1 for d in ("a", "b")}
    return BatchSampler(data, batch_size=2, crop_size=None, flip_probability=0.5)


def run_steps(model, sampler, data_rng, current: EpochInProgress, first_step: int, n: int) -> None:
    plan = sampler.plan_epoch(n, data_rng)
    for index in range(n):
        train_step(model, sampler.batch(plan, index), first_step + index + 1, current.sums, current.counts)
    current.step_in_epoch += n


def continuation(model, schedulers, data_rng, sampler) -> dict[str, torch.Tensor]:
    """What the run does next: two more steps (a D step among them), an LR step, the next
    draws of torch's and the data generator; every number it ends with, flattened."""
    current = EpochInProgress()
    run_steps(model, sampler, data_rng, current, first_step=3, n=2)
    for scheduler in schedulers.values():
        scheduler.step()
    out = {f"{net}.{k}": v.clone() for net, module in model.networks().items() for k, v in module.state_dict().items()}
    out.update({f"lr_{name}": torch.tensor(opt.param_groups[0]["lr"]) for name, opt in model.optimizers.items()})
    for name, opt in model.optimizers.items():
        for index, slot in opt.state_dict()["state"].items():
            out.update({f"adam_{name}.{index}.{k}": v.clone() for k, v in slot.items()})
    for domain, pool in model.extra_state()["pools"].items():
        out[f"pool_{domain}"] = pool["images"].clone()
    out.update({f"loss_{k}": v for k, v in current.sums.items()})
    out["torch_draw"] = torch.rand(4)
    out["data_draw"] = torch.randint(1000, (4,), generator=data_rng)
    return out


def test_a_restored_checkpoint_continues_exactly_like_the_run_it_was_taken_from(sampler, tmp_path):
    model, schedulers, data_rng = build(seed=1)
    current = EpochInProgress(rng_at_start=data_rng.get_state())
    run_steps(model, sampler, data_rng, current, first_step=0, n=3)
    for scheduler in schedulers.values():
        scheduler.step()
    progress = Progress(epoch=1, step=3, history=[{"epoch": 1, "step": 3, "kimg": 0.006, "G_total": 1.25}],
                        run_id="run-1", seconds_before=4.0, current=current)
    path = tmp_path / "checkpoint.pt"
    Checkpoint(path, "fingerprint", model, schedulers, data_rng, CPU).save(progress, seconds=12.5)
    expected = continuation(model, schedulers, data_rng, sampler)

    fresh_model, fresh_schedulers, fresh_rng = build(seed=2)  # another init, another data seed
    torch.manual_seed(7)
    restored = Checkpoint(path, "fingerprint", fresh_model, fresh_schedulers, fresh_rng, CPU).load(total_epochs=3)
    assert (restored.epoch, restored.step, restored.run_id, restored.seconds_before) == (1, 3, "run-1", 12.5)
    assert restored.history == progress.history
    assert restored.current.step_in_epoch == 3 and restored.current.counts == current.counts
    assert torch.equal(restored.current.rng_at_start, current.rng_at_start)
    assert restored.current.sums.keys() == current.sums.keys()
    assert all(torch.equal(restored.current.sums[k], current.sums[k]) for k in current.sums)

    got = continuation(fresh_model, fresh_schedulers, fresh_rng, sampler)
    assert got.keys() == expected.keys()
    assert [k for k in expected if not torch.equal(got[k], expected[k])] == []


def test_a_checkpoint_between_epochs_holds_no_partial_epoch(sampler, tmp_path):
    model, schedulers, data_rng = build(seed=1)
    checkpoint = Checkpoint(tmp_path / "checkpoint.pt", "fingerprint", model, schedulers, data_rng, CPU)
    checkpoint.save(Progress(epoch=2, step=6), seconds=1.0)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["partial_epoch"] is None
    restored = checkpoint.load(total_epochs=2)
    assert restored.current == EpochInProgress() and (restored.epoch, restored.step) == (2, 6)


def test_a_checkpoint_of_another_run_or_past_the_asked_epochs_is_not_resumed(sampler, tmp_path, caplog):
    model, schedulers, data_rng = build(seed=1)
    path = tmp_path / "checkpoint.pt"
    Checkpoint(path, "ours", model, schedulers, data_rng, CPU).save(Progress(epoch=3, step=9), seconds=1.0)
    with caplog.at_level(logging.WARNING):
        assert Checkpoint(path, "theirs", model, schedulers, data_rng, CPU).load(total_epochs=5) is None
        assert Checkpoint(path, "ours", model, schedulers, data_rng, CPU).load(total_epochs=2) is None
    assert "written under another config, seed or data" in caplog.text and "past the 2 asked for" in caplog.text
    assert Checkpoint(tmp_path / "none.pt", "ours", model, schedulers, data_rng, CPU).load(total_epochs=5) is None


def test_an_unreadable_checkpoint_is_named(tmp_path):
    model, schedulers, data_rng = build(seed=1)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputDataError, match="(?s)checkpoint.pt: cannot be read as a checkpoint.*delete it"):
        Checkpoint(path, "ours", model, schedulers, data_rng, CPU).load(total_epochs=5)


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    import builtins
    model, schedulers, data_rng = build(seed=1)
    checkpoint = Checkpoint(tmp_path / "checkpoint.pt", "ours", model, schedulers, data_rng, CPU)
    checkpoint.save(Progress(epoch=1, step=3), seconds=1.0)
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def full_disk_open(path, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(pipeline.engine.checkpoint, "open", full_disk_open, raising=False)
    with pytest.raises(PipelineError, match=r"checkpoint of epoch 2 \(the disk is full\); the previous checkpoint "
                                            "is untouched"):
        checkpoint.save(Progress(epoch=2, step=6), seconds=2.0)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary left


def test_the_fingerprint_ignores_exactly_the_resume_neutral_knobs():
    knobs = {"model": {"name": "cyclegan", "lr_g": 1e-4}, "train": dict(TRAIN_DEFAULTS), "seed": 3}
    reference = resume_fingerprint(knobs, "data-v1")
    for key in sorted(RESUME_NEUTRAL):
        changed = {**knobs, "train": {**knobs["train"], key: "other"}}
        assert resume_fingerprint(changed, "data-v1") == reference, key
    for key in sorted(set(TRAIN_DEFAULTS) - RESUME_NEUTRAL):
        changed = {**knobs, "train": {**knobs["train"], key: "other"}}
        assert resume_fingerprint(changed, "data-v1") != reference, key
    assert resume_fingerprint({**knobs, "seed": 4}, "data-v1") != reference
    assert resume_fingerprint({**knobs, "model": {**knobs["model"], "lr_g": 2e-4}}, "data-v1") != reference
    assert resume_fingerprint(knobs, "data-v2") != reference
