"""Training loop: targets, config, a loss that falls on a fixed batch, freezing, and bit-exact resume."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from page4d.data.synthetic import SceneConfig, generate_clip
from page4d.geometry.pose_encoding import pose_encoding_to_extri_intri
from page4d.train.config import TrainConfig
from page4d.train.targets import make_targets
from page4d.train.trainer import Batches, Trainer, compute_losses, lr_factor

SCENE = SceneConfig(num_times=2, num_views=2, height=28, width=42)


def tiny_config(**changes) -> TrainConfig:
    config = TrainConfig(model="tiny-mv", scene=SCENE, steps=4, log_every=1, checkpoint_every=2)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_targets_live_in_the_first_camera_at_unit_scale():
    clip = generate_clip(SCENE, seed=3)
    targets = make_targets(clip.extrinsics[None], clip.intrinsics[None], clip.depth[None], clip.dynamic_mask[None])
    extrinsic, intrinsic = pose_encoding_to_extri_intri(targets.pose_enc, (28, 42))
    assert torch.allclose(extrinsic[0, 0, 0], torch.eye(3, 4), atol=1e-6)
    distance = targets.world_points[targets.valid].norm(dim=-1).mean()
    assert abs(distance.item() - 1.0) < 1e-5
    assert torch.allclose(targets.depth * targets.scale, clip.depth[None].float(), rtol=1e-5, atol=1e-5)
    assert torch.allclose(intrinsic[..., 0, 0], clip.intrinsics[None][..., 0, 0], rtol=1e-5)  # the focal survives


def test_config_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 7\nscene:\n  num_views: 3\n  fov_deg: [40, 50]\noptim:\n  lr: 0.01\n")
    config = TrainConfig.load(path, ["optim.lr=2e-4", "train=['camera_head.*']", "scene.height=56"])
    assert config.steps == 7 and config.scene.num_views == 3 and config.scene.fov_deg == (40, 50)
    assert config.optim.lr == 2e-4 and config.train == ["camera_head.*"] and config.scene.height == 56
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"config.optim: unknown fields \['lrr'\]"):
        TrainConfig.load(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="config.steps: expected a number"):
        TrainConfig.load(None, ["steps=many"])
    with pytest.raises(ValueError, match="write it as key=value"):
        TrainConfig.load(None, ["steps"])


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    trainer = Trainer(tiny_config(), "unused")
    batch = Batches(trainer.config).batch(0)
    optimizer = torch.optim.Adam(trainer.model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        total, terms = compute_losses(trainer.model, batch, 0, trainer.config.loss_weights)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert {"camera", "depth_conf", "point_reg", "mask_bce", "mask_dice"} <= set(terms)
    assert losses[-1] < 0.7 * losses[0], losses


def test_frozen_parameters_do_not_move(tmp_path):
    trainer = Trainer(tiny_config(train=["camera_head.*"]), tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step()
    after = trainer.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("camera_head.") for k in moved)


def test_a_resumed_run_continues_bit_for_bit(tmp_path):
    straight = Trainer(tiny_config(), tmp_path / "straight")
    straight.run(progress=False)
    interrupted = Trainer(tiny_config(), tmp_path / "resumed")
    interrupted.folder.mkdir()
    for _ in range(2):
        interrupted.train_step()
    interrupted.save()
    resumed = Trainer(tiny_config(seed=0), tmp_path / "resumed")
    resumed.resume()
    assert resumed.step == 2
    resumed.run(progress=False)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    log = (tmp_path / "straight" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,lr,loss,grad_norm,camera_T") and len(log) == 5
    assert (tmp_path / "straight" / "model" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="no checkpoint.pt to resume from"):
        Trainer(tiny_config(), tmp_path / "empty").resume()


def test_train_command_line(tmp_path, capsys):
    from page4d.cli.main import main

    out = tmp_path / "run"
    args = ["train", "steps=2", "scene.num_times=2", "scene.num_views=2", "scene.height=28", "scene.width=42",
            "checkpoint_every=1", "-o", str(out), "--quiet"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "log.csv", "model"]
    assert TrainConfig.load(out / "config.yaml").steps == 2
    assert main(args) == 2 and "not empty" in capsys.readouterr().err  # an existing run is not overwritten
    assert main([*args[:1], "steps=3", *args[2:], "--resume"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3
    assert main(["train", "optim.nope=1", "-o", str(tmp_path / "x")]) == 2
    assert "unknown fields ['nope']" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    trainer = Trainer(tiny_config(), "unused")
    batch = Batches(trainer.config).batch(0)

    def loss_and_grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        trainer.model.aggregator.gradient_checkpointing = checkpointing
        trainer.model.zero_grad()
        total, _ = compute_losses(trainer.model, batch, 0, trainer.config.loss_weights)
        total.backward()
        return total.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    plain, recomputed = loss_and_grads(False), loss_and_grads(True)
    assert torch.equal(plain[0], recomputed[0])
    assert plain[1].keys() == recomputed[1].keys() and len(plain[1]) > 100
    for name, grad in plain[1].items():
        assert torch.equal(grad, recomputed[1][name]), name


def test_parameter_groups_have_their_own_rates_and_warm_up(tmp_path):
    config = TrainConfig.load(None, [
        "model=tiny-mv", "scene.num_times=2", "scene.num_views=2", "scene.height=28", "scene.width=42", "steps=10",
        "optim.lr=1e-3", "optim.groups=[{patterns: ['camera_head.*'], lr: 0.1, warmup_steps: 4, weight_decay: 0}]",
    ])
    trainer = Trainer(config, tmp_path)
    camera, rest = trainer.optimizer.param_groups
    assert {id(p) for p in camera["params"]} == {id(p) for p in trainer.model.camera_head.parameters()}
    assert len(rest["params"]) > len(camera["params"]) and camera["weight_decay"] == 0
    assert math.isclose(camera["lr"], 0.1 / 4) and math.isclose(rest["lr"], 1e-3)  # warm-up step 1 of 4; none
    for _ in range(3):
        trainer.train_step()
    assert math.isclose(camera["lr"], 0.1 * lr_factor(3, 4, 10, 0.01)) and camera["lr"] == 0.1  # warmed up
    assert math.isclose(rest["lr"], 1e-3 * lr_factor(3, 0, 10, 0.01)) and rest["lr"] < 1e-3  # decaying
    assert math.isclose(lr_factor(10, 0, 10, 0.01), 0.01) and lr_factor(0, 0, 10, 0.01) == 1.0
    twice = config.optim.groups * 2
    with pytest.raises(ValueError, match=r"optim.groups\[1\] claims .* already in group 0"):
        Trainer(dataclasses.replace(config, optim=dataclasses.replace(config.optim, groups=twice)), tmp_path)
    frozen = dataclasses.replace(config, train=["depth_head.*"])
    with pytest.raises(ValueError, match=r"optim.groups\[0\]: 1 patterns match no target key: camera_head"):
        Trainer(frozen, tmp_path)


def test_periodic_evaluation_on_held_out_scenes(tmp_path):
    config = tiny_config(steps=2, eval_every=1, eval_scenes=1)
    Trainer(config, tmp_path).run(progress=False)
    rows = (tmp_path / "eval.csv").read_text().splitlines()
    assert rows[0] == "step,depth_abs_rel,depth_delta_1.25,ate_rmse,auc@30,mask_iou" and len(rows) == 3
    values = [float(x) for x in rows[2].split(",")]
    assert values[0] == 2 and all(np.isfinite(values)) and 0 <= values[2] <= 1 and 0 <= values[5] <= 1


def test_held_out_truth_scores_perfectly():
    """The evaluation path itself: a scene's ground truth, as the prediction, gives zero error."""
    import tempfile
    from pathlib import Path

    from page4d.eval.runner import evaluate
    from page4d.reconstruction.ground_truth import reconstruction_from_clip
    from page4d.train.trainer import held_out_scenes

    with tempfile.TemporaryDirectory() as scratch:
        clip = held_out_scenes(SCENE, 1, Path(scratch))[0]
        report = evaluate(clip, reconstruction_from_clip(clip, size=SCENE.width))
    assert report["depth"]["median"]["all"]["abs_rel"] < 1e-6 and report["cameras"]["ate_rmse"] < 1e-5
    assert report["dynamic_mask"]["iou"] == 1.0


def test_the_example_configs_are_valid():
    """The GPU fine-tuning recipe's patterns and groups fit page4d-mv (built on the meta device), and the CPU
    example loads."""
    from pathlib import Path

    from page4d.model import Page4D
    from page4d.presets import preset
    from page4d.train.freeze import train_only
    from page4d.train.trainer import param_groups

    examples = Path(__file__).resolve().parents[1] / "examples" / "train"
    recipe = TrainConfig.load(examples / "finetune_page4d_mv.yaml")
    assert recipe.model == "page4d-mv" and recipe.data[0].kind == "clip" and recipe.optim.groups[0].lr == 2e-5
    with torch.device("meta"):
        model = Page4D(preset(recipe.model))
    trained = train_only(model, recipe.train)
    groups, warmups = param_groups(model, recipe.optim)
    assert sum(len(g["params"]) for g in groups) == len(trained) and warmups == [3000, 1000]
    from page4d.data.synthetic import SCENE_PRESETS

    rigs = TrainConfig.load(examples / "small_mv_rigs.yaml")  # the next default model's stage 1
    heldout = SCENE_PRESETS["rigs-heldout"].rig_families
    assert rigs.scene.rig_families == SCENE_PRESETS["rigs-train"].rig_families and not set(heldout) & set(
        rigs.scene.rig_families)
    assert rigs.inputs.external_mask > 0 and rigs.inputs.keypoints > 0
    assert any(name.startswith("aggregator.time_blocks.19.") for name in trained)
    assert not any(name.startswith(("aggregator.time_blocks.9.", "camera_head.")) for name in trained)
    assert TrainConfig.load(examples / "synthetic_tiny.yaml").model == "tiny-mv"


def test_background_workers_make_the_loop_s_own_batches(tmp_path):
    """Batches made by two worker processes ahead of the loop are exactly those the loop makes itself, step by
    step, from a resumed step on too; a run with them logs the same losses (to float rounding: generating a scene
    changes the thread count between steps)."""
    trainer = Trainer(tiny_config(workers=2, steps=4), tmp_path / "w")
    trainer.step = 1
    ahead = list(trainer.batches_ahead())
    assert len(ahead) == 3
    for step, batch in zip(range(1, 4), ahead, strict=True):
        own = trainer.batches.batch(step, trainer._share)
        assert batch.keys() == own.keys() and all(torch.equal(batch[k], own[k]) for k in own)
    logs = {}
    for workers in (0, 2):
        torch.manual_seed(0)
        Trainer(tiny_config(workers=workers, steps=3), tmp_path / f"run{workers}").run(progress=False)
        logs[workers] = np.loadtxt(tmp_path / f"run{workers}" / "log.csv", delimiter=",", skiprows=1)
    assert logs[0].shape == logs[2].shape == (3, logs[0].shape[1])
    np.testing.assert_allclose(logs[0], logs[2], rtol=1e-5)
