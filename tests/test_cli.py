"""The console entry point, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def vlm_sweep(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLM_SWEEP_LOG": "WARNING"}
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@pytest.mark.slow  # a `vlm-sweep` process: imports the whole stack (seconds each)
def test_model_flags_override_one_field_of_the_preset(tmp_path, corpus):
    r = vlm_sweep("train", "--preset", "tiny", "--model.projector.name", "dense_connector",
                  "--model.format.mode", "raw", "--data.train", str(corpus / "sharegpt4v_sample.jsonl"),
                  "--data.images", str(corpus / "images"), "--train.max_steps", "1", "--train.batch_size", "2",
                  "--out", str(tmp_path / "t"))
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((tmp_path / "t" / "run_config.json").read_text())
    assert cfg["model"]["projector"]["name"] == "dense_connector" and cfg["model"]["format"]["mode"] == "raw"
    assert cfg["model"]["vision"]["image_size"] == 64  # the rest is still the tiny preset


@pytest.mark.slow  # a `vlm-sweep` process: imports the whole stack (seconds each)
@pytest.mark.parametrize("args, message", [
    (["run", "--preset", "huge"], "huge"),
    (["train", "--train.lr", "5", "--data.train", "x", "--data.images", "y"], "train.lr"),
    (["train", "--train.bogus", "1"], "bogus"),
])
def test_bad_arguments_fail_with_a_message_naming_them(args, message):
    r = vlm_sweep(*args)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # a `vlm-sweep` process: imports the whole stack (seconds each)
def test_sample_corpus_command(tmp_path):
    r = vlm_sweep("data", "sample-corpus", "--out", str(tmp_path / "c"), "--n_train_images", "10",
                  "--n_eval_questions", "5")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = (tmp_path / "c" / "sharegpt4v_sample.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert set(rec) == {"id", "image", "conversations"} and (tmp_path / "c" / "images" / rec["image"]).is_file()


@pytest.mark.slow  # a `vlm-sweep` process: imports the whole stack (seconds each)
def test_data_build_names_a_missing_source_before_starting_ray(tmp_path):
    r = vlm_sweep("data", "build", "--source", str(tmp_path / "nope.jsonl"), "--images", str(tmp_path),
                  "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "nope.jsonl does not exist" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # a `vlm-sweep` process: imports the whole stack (seconds each)
def test_data_build_help_lists_the_typed_options():
    r = vlm_sweep("data", "build", "--help")
    assert r.returncode == 0
    for flag in ("--source", "--variants", "--translate.name", "--embed.batch_size", "--umap.n_components",
                 "--cluster.method", "--check_images"):
        assert flag in r.stdout


@pytest.mark.slow  # a `vlm-sweep` process: imports the whole stack (seconds each)
def test_unreadable_training_data_is_named_without_a_traceback(tmp_path, corpus):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "image": "a.jpg", "conversations": []}\n{"id": 2, "image": \n')
    r = vlm_sweep("train", "--preset", "tiny", "--data.train", str(bad), "--data.images", str(corpus / "images"),
                  "--out", str(tmp_path / "t"))
    assert r.returncode == 2 and "bad.jsonl:2: not valid JSON" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # a `vlm-sweep` process: imports the whole stack (seconds each)
@pytest.mark.parametrize("args, message", [
    (["run", "--preset", "tiny", "--out", "{blocker}/out"], "cannot write to"),
    (["sweep", "--preset", "tiny", "--data", "{tmp}/d", "--images", "{tmp}/i", "--out", "{tmp}/s",
      "--min_free_gb", "1000000"], "GiB free"),
])
def test_unwritable_or_full_output_fails_before_any_work(tmp_path, args, message):
    blocker = tmp_path / "a-file"  # a folder cannot be made inside a file (root ignores permission bits)
    blocker.write_text("x")
    r = vlm_sweep(*[a.format(blocker=blocker, tmp=tmp_path) for a in args])
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())  # nothing started


SWEEP_ARGS = ["--data", "d", "--images", "i"]
TRAIN_ARGS = ["--data.train", "x", "--data.images", "y"]


@pytest.mark.slow  # a `vlm-sweep` process: imports the whole stack (seconds each)
@pytest.mark.parametrize("command, rest, text, message", [
    (["sweep"], SWEEP_ARGS, "max_failures: -1\n", "max_failures: must be >= 0"),
    (["sweep"], SWEEP_ARGS, "max_failure: 1\n", "'max_failure'"),
    (["sweep"], SWEEP_ARGS, "preset: nope\n", "unknown preset 'nope'"),
    (["sweep"], SWEEP_ARGS, "grid: paper20\n", "paper20"),
    (["train"], TRAIN_ARGS, "train:\n  lr: 5\n", "train.lr: 5.0 is out of range"),
    (["train"], TRAIN_ARGS, "train:\n  bogus: 1\n", "'train.bogus'"),
    (["data", "build"], ["--source", "s", "--images", "i", "--out", "o"], "umap: {n_components: 0}\n", "umap"),
])
def test_a_config_file_with_an_unknown_key_or_a_bad_value_is_named(tmp_path, command, rest, text, message):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(text)
    r = vlm_sweep(*command, "--config", str(cfg), *rest)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


@pytest.mark.slow  # a `vlm-sweep` process: imports the whole stack (seconds each)
def test_a_config_file_sets_options_and_later_flags_override_it(tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text("preset: tiny\npaper_ids: [3, 9]\ndry_run: true\nstage: '1'\n")
    r = vlm_sweep("sweep", "--config", str(cfg), "--data", "d", "--images", "i", "--paper_ids", "[3]")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stage 1: 1 trials" in r.stdout and "s1-20kUmap-nodense-raw-linear-e6-b12" in r.stdout


@pytest.mark.slow  # a `vlm-sweep` process: imports the whole stack (seconds each)
def test_flags_take_dashes_and_yes_no_flags_are_switches(tmp_path):
    # as people type them: a dashed dotted name, a switch given alone, and --no-X; the same plan as the
    # underscore / explicit-value form
    r = vlm_sweep("sweep", "--data", "d", "--images", "i", "--preset", "tiny", "--paper-ids", "[3]", "--stage", "1",
                  "--dry-run", "--no-feature-cache")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stage 1: 1 trials" in r.stdout and "s1-20kUmap-nodense-raw-linear-e6-b12" in r.stdout
    old = vlm_sweep("sweep", "--data", "d", "--images", "i", "--preset", "tiny", "--paper_ids", "[3]", "--stage", "1",
                    "--dry_run", "true", "--feature_cache", "false")
    assert old.returncode == 0 and old.stdout == r.stdout
    # a switch left out is off: without --dry-run the same command starts a sweep (and fails on the missing data)
    r = vlm_sweep("sweep", "--data", str(tmp_path / "nope"), "--images", "i", "--preset", "tiny", "--paper-ids", "[3]",
                  "--stage", "1", "--out", str(tmp_path / "s"))
    assert r.returncode != 0 and "stage 1: 1 trials" not in r.stdout


def test_conventional_argv_rewrites_only_option_names_and_switches():
    from sweeps.cli import build_parser, conventional_argv

    def conv(*argv):
        return conventional_argv(build_parser(list(argv)), list(argv))

    assert conv("sweep", "--dry-run", "--resume", "--data", "my-data") == [
        "sweep", "--dry_run", "true", "--resume", "true", "--data", "my-data"]  # values keep their dashes
    assert conv("sweep", "--dry-run", "false", "--resume=true") == ["sweep", "--dry_run", "false", "--resume=true"]
    assert conv("sweep", "--no-feature-cache", "--no_resume") == [
        "sweep", "--feature_cache", "false", "--resume", "false"]
    assert conv("train", "--train.max-steps", "3", "--train.group-by-length") == [
        "train", "--train.max_steps", "3", "--train.group_by_length", "true"]
    assert conv("data", "build", "--check-images", "--source", "s") == [
        "data", "build", "--check_images", "true", "--source", "s"]
    assert conv("sweep", "--data", "d", "--", "--dry-run") == ["sweep", "--data", "d", "--", "--dry-run"]
    assert conv("--help") == ["--help"]


@pytest.mark.slow  # a `vlm-sweep` process: imports the whole stack (seconds each)
def test_version_prints_the_version_and_the_pinned_stack():
    from importlib.metadata import version

    r = vlm_sweep("--version")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"vlm-sweep {version('vlm-sweep')} (Python ")
    listed = {line.split()[0]: line.split()[1] for line in lines[1:]}
    for pkg in ("torch", "ray", "transformers", "sentence-transformers", "umap-learn", "wandb"):
        assert listed[pkg] == version(pkg)
    assert "pytest" not in listed  # the test extra is not the stack
    assert not [line for line in lines[1:] if "pinned" in line and "torch" not in line]  # installed = pinned


@pytest.mark.slow  # a `vlm-sweep` process: imports the whole stack (seconds each)
def test_an_unreachable_ray_address_is_named_in_seconds(tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", "VLM_SWEEP_LOG": "WARNING"}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "sweeps.cli", "sweep", "--data", "d", "--images", "i", "--preset",
                        "tiny", "--paper_ids", "[3]", "--out", str(tmp_path / "s")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"RAY_ADDRESS='127.0.0.1:{port}' does not answer" in r.stderr and "unset RAY_ADDRESS" in r.stderr
    assert time.monotonic() - t0 < 60  # ray.init alone retries for minutes


@pytest.mark.slow  # a `vlm-sweep` process: imports the whole stack (seconds each)
def test_a_model_path_that_does_not_exist_is_named(tmp_path, corpus):
    missing = tmp_path / "no" / "such" / "model"
    for flag in ("--model.lm.source", "--model.vision.source"):
        r = vlm_sweep("train", "--preset", "tiny", flag, str(missing), "--data.train",
                      str(corpus / "sharegpt4v_sample.jsonl"), "--data.images", str(corpus / "images"),
                      "--out", str(tmp_path / "t"))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert str(missing) in r.stderr and "save_pretrained" in r.stderr
    image = next(p for p in (corpus / "images").rglob("*") if p.is_file())
    r = vlm_sweep("chat", "--checkpoint", str(missing), "--image", str(image),
                  "What is it?")
    assert r.returncode == 2 and f"{missing}: not a checkpoint" in r.stderr


def run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    """``vlm-sweep ARGV`` in this process: (exit code, stderr). Parse errors exit through SystemExit."""
    from sweeps.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


BUILD_ARGS = ["--source", "s", "--images", "i", "--out", "o"]


@pytest.mark.parametrize("args, message", [
    (["train", *TRAIN_ARGS, "--model.projector.name", "mlp"],
     "projector.name: unknown projector 'mlp'; choose one of ['dense_connector', 'dense_sci', 'dense_sti', 'linear', "
     "'mlp2x_gelu']"),
    (["train", *TRAIN_ARGS, "--train.scheduler", "cos"],
     "train.scheduler: unknown schedule 'cos'; choose one of ['cosine', 'linear']"),
    (["train", *TRAIN_ARGS, "--model.projector.feature_norm", "l2"],
     "projector.feature_norm: unknown feature norm 'l2'; choose one of ['none', 'standardize']"),
    (["train", *TRAIN_ARGS, "--model.projector.sti_pool", "max"],
     "projector.sti_pool: unknown STI pooling 'max'; choose one of ['grid', 'sequence']"),
    (["sweep", *SWEEP_ARGS, "--backend", "h100"],
     "backend: unknown backend 'h100'; choose one of ['a100-40g', 'a100-80g', 'cpu', 'mig-40g', 'mig-80g', "
     "'whole-gpu']"),
    (["data", "build", *BUILD_ARGS, "--translate.name", "google"],
     "translate.name: 'google' is not one of dictionary, none, seq2seq"),
])
def test_a_registry_name_is_refused_when_the_config_is_parsed_naming_the_choices(args, message, capsys, monkeypatch):
    import data_pipeline.commands
    import sweeps.commands
    import vlm_core.commands

    def never(*_, **__):
        raise AssertionError("the command ran: the name was not checked when the config was parsed")

    for module, name in ((vlm_core.commands, "run_stage"), (sweeps.commands, "run_sweep"),
                         (data_pipeline.commands, "build")):
        monkeypatch.setattr(module, name, never)
    code, err = run_in_process(args, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]


def test_a_preset_named_in_a_config_file_gives_the_model_its_defaults(tmp_path, capsys):
    from sweeps.cli import build_parser, preset_from_argv

    cfg = tmp_path / "run.yaml"
    cfg.write_text("preset: local\ntrain:\n  epochs: 2\n")
    argv = ["train", "--config", str(cfg), *TRAIN_ARGS]
    assert preset_from_argv(argv) == "local"
    parsed = build_parser(argv).parse_args(argv)
    assert parsed.train.preset == "local" and parsed.train.train.epochs == 2
    model = parsed.train.model
    assert model.lm.source == "smollm2" and model.vision.encoder == "efficientnet_lite0"  # local's
    # the last one given wins, flag or file, as jsonargparse merges them
    later_flag = ["train", "--config", str(cfg), "--preset", "tiny", *TRAIN_ARGS]
    assert preset_from_argv(later_flag) == "tiny"
    assert build_parser(later_flag).parse_args(later_flag).train.model.lm.source == "tiny"
    assert preset_from_argv(["train", "--preset=tiny", f"--config={cfg}"]) == "local"
    assert preset_from_argv(["train", "--config", "{preset: local-long}"]) == "local-long"  # inline YAML


def test_dense_groups_reaches_the_trials_of_sweep_and_run(tmp_path, monkeypatch):
    import dataclasses

    import sweeps.study
    from sweeps.cli import build_parser
    from sweeps.driver import SweepConfig, plan

    for variant in ("10kRandom", "20kUmap"):
        (tmp_path / "data" / variant).mkdir(parents=True)
        (tmp_path / "data" / variant / "train-00000.parquet").write_bytes(b"")  # planning only checks it is there
    cfg = SweepConfig(data=str(tmp_path / "data"), images=str(tmp_path), preset="tiny", paper_ids=[7, 14],
                      stage="1", dense_groups=2)
    groups = {p.spec.config_id: dataclasses.asdict(p.model.projector) for p in plan(cfg, 1)}
    assert groups["s1-10kRandom-dense-chat-linear-e3-b8"] | {"name": "dense_connector", "dense_groups": 2} == \
        groups["s1-10kRandom-dense-chat-linear-e3-b8"]  # paper row 14, a dense connector with G = 2
    argv = ["sweep", "--data", "d", "--images", "i", "--dense_groups", "3"]
    assert build_parser(argv).parse_args(argv).sweep.dense_groups == 3
    seen = {}
    monkeypatch.setattr(sweeps.study, "run_sweep", lambda c: seen.setdefault("cfg", c))
    sweeps.study.run_sweep_stages(sweeps.study.StudyConfig(preset="tiny", dense_groups=3), tmp_path, tmp_path)
    assert seen["cfg"].dense_groups == 3
    argv = ["run", "--preset", "tiny", "--dense_groups", "3"]
    assert build_parser(argv).parse_args(argv).run.dense_groups == 3


def test_show_says_what_a_name_stands_for(capsys):
    from sweeps.cli import main
    from sweeps.matrix import get_grid
    from vlm_core.presets import PRESETS, get_preset

    assert main(["show", "preset", "tiny"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["name"] == "tiny" and record["model"] == get_preset("tiny").to_dict()
    assert main(["show", "preset"]) == 0  # every record, lazy models left unbuilt
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == PRESETS.names()
    assert main(["show", "grid", "lora"]) == 0
    out = capsys.readouterr().out
    assert all(t.config_id in out for stage in (1, 2) for t in get_grid("lora", stage))
    assert main(["show", "profiles"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["a100-40g", "a100-10g"] and "'GPU': 0.25" in line for line in lines)
    assert any(line.split()[:2] == ["a100-40g", "cpu"] for line in lines)
    assert main(["show", "prompt", "--preset", "tiny", "--question", "What colour?", "--answer", "Red."]) == 0
    prompt = capsys.readouterr().out
    assert "What colour?" in prompt and "[Red][.]" in prompt and "[<|im_end|>]" in prompt  # the trained tokens
    assert "[What" not in prompt and "<image>" in prompt  # the question is not trained on


def test_show_lengths_measures_records_under_a_presets_formatter(corpus, capsys):
    from sweeps.cli import main

    records = str(corpus / "sharegpt4v_sample.jsonl")
    assert main(["show", "lengths", "--records", records, "--preset", "tiny", "--max-length", "64"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["max_length"] == 64 and stats["rows"] > 0 and stats["over"] > 0  # short cap: some cut or dropped
    assert stats["over"] == stats["cut"] + stats["dropped"]
