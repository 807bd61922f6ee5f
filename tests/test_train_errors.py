"""Bad devices, recipes, training configs and checkpoints are one-line ``ValueError``s naming what to fix, raised
before a run writes anything; resumed runs log each step once; ``model/`` is written whole."""

from __future__ import annotations

import json
import re

import pytest
import torch
from test_trainer import tiny_config

from page4d.checkpoints.composition import load_recipe
from page4d.data.synthetic import SceneConfig
from page4d.devices import resolve_device
from page4d.train.config import DataSource, TrainConfig
from page4d.train.trainer import Trainer


def one_line_error(call, *args) -> str:
    with pytest.raises(ValueError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "", "gpu", "CPU"])
def test_unknown_device_names_say_what_to_use(name):
    assert one_line_error(resolve_device, name) == f"device {name}: unknown; use cpu, cuda, cuda:N or auto"


def test_a_gpu_the_machine_lacks_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    message = one_line_error(resolve_device, "cuda:1")
    assert message == "device cuda:1: this machine has 1 GPU(s); use cuda:0 to cuda:0"


RECIPE = {"name": "only-vggt", "target": "tiny-conv", "sources": {"v": "vggt"},
          "stages": [{"source": "v", "keys": ["*"]}]}


@pytest.mark.parametrize(("name", "text", "problem"), [
    ("r.yaml", "name: x\nstages: [unclosed\n", r"not valid YAML \(.* at line 3, column 1\)"),
    ("r.json", '{"name": "x",', r"not valid JSON \(.* at line 1, column 14\)"),
    ("r.yaml", "- name\n- target\n", "a recipe is a mapping of fields, got list"),
    ("r.json", "3", "a recipe is a mapping of fields, got int"),
    ("r.json", json.dumps({"name": "x"}), r"recipe fields \['sources', 'stages', 'target'\] are missing"),
    ("r.json", json.dumps(RECIPE | {"name": 7}), "recipe field name: expected a string"),
    ("r.json", json.dumps(RECIPE | {"target": [1]}), "recipe field target: expected a preset name"),
    ("r.json", json.dumps(RECIPE | {"sources": ["v"]}), "recipe field sources: expected a mapping"),
    ("r.json", json.dumps(RECIPE | {"stages": {"v": "*"}}), "recipe field stages: expected a list"),
    ("r.yaml", "name: x\ntarget: tiny\nsources: {v: vggt}\nstages: [{source: v, keys: '*'}]\n",
     r"recipe field stages\[0\]: expected \{source: label, keys: \[patterns\]\}"),
    ("r.json", json.dumps(RECIPE | {"initialise": {"a.*": 3}}), "recipe field initialise: expected a mapping"),
    ("r.json", json.dumps(RECIPE | {"precedence": 1}), "recipe field precedence: expected 'error' or 'first'"),
    ("r.json", json.dumps(RECIPE | {"allow_shared_sources": "yes"}), "allow_shared_sources: expected true or false"),
])
def test_malformed_recipe_files_name_the_file_and_the_problem(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text)
    message = one_line_error(load_recipe, path)
    assert message.startswith(f"{path}: ")
    assert re.search(problem, message), message


@pytest.mark.parametrize(("override", "field"), [
    ("batch_size=0", "batch_size"), ("steps=-5", "steps"), ("steps=2.5", "steps"), ("log_every=-1", "log_every"),
    ("checkpoint_every=0", "checkpoint_every"), ("eval_every=-1", "eval_every"), ("jitter=-0.1", "jitter"),
    ("zoom=0.5", "zoom"), ("optim.lr=0", "optim.lr"), ("optim.grad_clip=0", "optim.grad_clip"),
    ("optim.weight_decay=-1", "optim.weight_decay"), ("optim.warmup_steps=-1", "optim.warmup_steps"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio"), ("optim.groups=[{patterns: ['*'], lr: -1}]",
                                                     r"optim.groups\[0\].lr"),
    ("loss_weights.camera=-1", "loss_weights.camera"), ("model=tiny-nope", "model"),
    ("scene.height=30", "scene.height"), ("scene.width=0", "scene.width"), ("scene.num_views=0", "scene.num_views"),
    ("device=5", "device"), ("gradient_checkpointing=1", "gradient_checkpointing"), ("init=5", "init"),
    ("data=[{path: 3}]", r"data\[0\].path"),
])
def test_nonsense_config_values_name_the_field(override, field):
    message = one_line_error(TrainConfig.load, None, [override])
    assert re.match(f"config.{field}: ", message), message


def test_eval_scenes_only_matter_when_evaluating():
    assert TrainConfig.load(None, ["eval_scenes=0"]).eval_scenes == 0
    assert "config.eval_scenes: got 0" in one_line_error(TrainConfig.load, None, ["eval_every=5", "eval_scenes=0"])


def test_bad_configs_fail_before_the_run_folder_exists(tmp_path, capsys):
    from page4d.cli.main import main

    out = tmp_path / "run"
    assert main(["train", "batch_size=0", "-o", str(out)]) == 2
    assert "config.batch_size: got 0; use an integer >= 1" in capsys.readouterr().err and not out.exists()
    changed = tiny_config(batch_size=0)  # changed after it was built: the trainer checks it again
    assert "config.batch_size" in one_line_error(Trainer, changed, out)
    missing = tiny_config(data=[DataSource(kind="clip", path=str(tmp_path / "nowhere"))])
    assert "clip folder not found" in one_line_error(Trainer, missing, out)
    assert not out.exists()


def test_an_init_checkpoint_checks_the_scene_size_against_its_patch_size(tmp_path):
    from page4d.model import Page4D
    from page4d.presets import preset

    Page4D(preset("tiny-mv")).save_pretrained(tmp_path / "init")
    config = TrainConfig(init=str(tmp_path / "init"), scene=SceneConfig(num_times=2, num_views=2, height=30))
    message = one_line_error(Trainer, config, tmp_path / "run")
    assert message.startswith(f"config.scene.height: got 30; use a positive multiple of {tmp_path / 'init'}'s patch")
    assert not (tmp_path / "run").exists()


def test_resume_rejects_what_is_not_this_runs_checkpoint_and_changes_nothing(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    trainer = Trainer(tiny_config(), folder)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    checkpoint = folder / "checkpoint.pt"

    def rejected() -> str:
        message = one_line_error(trainer.resume)
        assert message.startswith(f"{checkpoint}: "), message
        assert trainer.step == 0 and not trainer.optimizer.state and trainer.scheduler.last_epoch == 0
        assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
        return message

    other = Trainer(tiny_config(model="tiny"), folder)
    other.save()
    assert re.search(r"was written for another model configuration: \d+ missing / \d+ unexpected / "
                                   r"\d+ mis-shaped keys \(e.g. .+\); resume with the run's own config.yaml",
                                   rejected())
    Trainer(tiny_config(train=["camera_head.*"]), folder).save()
    assert "its optimiser has parameter groups of [" in rejected()
    ahead = Trainer(tiny_config(), folder)
    ahead.step = 5
    ahead.save()
    assert "the checkpoint is at step 5, outside 0..steps=4; set steps" in rejected()
    checkpoint.write_bytes(b"not a checkpoint at all")
    assert "not a training checkpoint (torch cannot read it" in rejected()
    torch.save(torch.zeros(3), checkpoint)
    assert "not a training checkpoint (it holds a Tensor)" in rejected()
    torch.save({"model": trainer.model.state_dict(), "step": 0}, checkpoint)
    assert "it holds a dict without ['optimizer', 'rng', 'scheduler']" in rejected()
    trainer.save()  # its own checkpoint still resumes
    trainer.resume()


class KilledError(Exception):
    """Stands in for the process being killed."""


@pytest.mark.slow
def test_a_run_resumed_from_an_older_checkpoint_logs_each_step_once(tmp_path):
    config = tiny_config(steps=9, log_every=1, checkpoint_every=5, eval_every=3, eval_scenes=1)
    Trainer(config, tmp_path / "straight").run(progress=False)
    killed = Trainer(config, tmp_path / "killed")
    step = killed.train_step

    def dies_after_step_7(batch: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        if killed.step == 7:
            raise KilledError
        return step(batch)

    killed.train_step = dies_after_step_7
    with pytest.raises(KilledError):
        killed.run(progress=False)
    log = (tmp_path / "killed" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == [str(s) for s in range(1, 8)]  # logged past the checkpoint
    resumed = Trainer(config, tmp_path / "killed")
    resumed.resume()
    assert resumed.step == 5
    resumed.run(progress=False)
    for name, steps in (("log.csv", range(1, 10)), ("eval.csv", (3, 6, 9))):
        rows = (tmp_path / "killed" / name).read_text().splitlines()
        assert [row.split(",")[0] for row in rows[1:]] == [str(s) for s in steps], name
        assert rows == (tmp_path / "straight" / name).read_text().splitlines(), name  # as if never killed


def test_the_model_folder_is_replaced_whole(tmp_path, monkeypatch):
    from page4d.model import Page4D

    trainer = Trainer(tiny_config(steps=1), tmp_path)
    model = trainer.run(progress=False)
    assert model == tmp_path / "model"
    assert sorted(p.name for p in model.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "config.yaml", "log.csv", "model"]
    saved = (model / "model.safetensors").read_bytes()

    def killed_while_saving(folder) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise KilledError

    trainer.train_step()
    with monkeypatch.context() as patch:
        patch.setattr(trainer.model, "save_pretrained", killed_while_saving)
        with pytest.raises(KilledError):
            trainer.save_model()
    assert (model / "model.safetensors").read_bytes() == saved  # the old model, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "config.yaml", "log.csv", "model"]
    trainer.save_model()
    again = Page4D.from_pretrained(model)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in trainer.model.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "config.yaml", "log.csv", "model"]


def test_a_broken_yaml_config_is_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: [1\nbatch_size: 2\n")
    message = one_line_error(TrainConfig.load, path)
    assert message.startswith(f"{path}: not valid YAML (") and "at line 2, column 11" in message
    assert "override 'steps=[1': the value is not valid YAML" in one_line_error(TrainConfig.load, None, ["steps=[1"])
