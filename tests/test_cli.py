"""The console entry point, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def vlm_sweep(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLM_SWEEP_LOG": "WARNING"}
    return subprocess.run([sys.executable, "-m", "vlm_core.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_model_flags_override_one_field_of_the_preset(tmp_path, corpus):
    r = vlm_sweep("train", "--preset", "tiny", "--model.projector.name", "dense_connector",
                  "--model.format.mode", "raw", "--data.train", str(corpus / "sharegpt4v_sample.jsonl"),
                  "--data.images", str(corpus / "images"), "--train.max_steps", "1", "--train.batch_size", "2",
                  "--out", str(tmp_path / "t"))
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((tmp_path / "t" / "run_config.json").read_text())
    assert cfg["model"]["projector"]["name"] == "dense_connector" and cfg["model"]["format"]["mode"] == "raw"
    assert cfg["model"]["vision"]["image_size"] == 64  # the rest is still the tiny preset


@pytest.mark.parametrize("args, message", [
    (["run", "--preset", "huge"], "huge"),
    (["train", "--train.lr", "5", "--data.train", "x", "--data.images", "y"], "train.lr"),
    (["train", "--train.bogus", "1"], "bogus"),
])
def test_bad_arguments_fail_with_a_message_naming_them(args, message):
    r = vlm_sweep(*args)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr


def test_sample_corpus_command(tmp_path):
    r = vlm_sweep("data", "sample-corpus", "--out", str(tmp_path / "c"), "--n_train_images", "10",
                  "--n_eval_questions", "5")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = (tmp_path / "c" / "sharegpt4v_sample.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert set(rec) == {"id", "image", "conversations"} and (tmp_path / "c" / "images" / rec["image"]).is_file()


def test_data_build_names_a_missing_source_before_starting_ray(tmp_path):
    r = vlm_sweep("data", "build", "--source", str(tmp_path / "nope.jsonl"), "--images", str(tmp_path),
                  "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "nope.jsonl does not exist" in r.stderr and "Traceback" not in r.stderr


def test_data_build_help_lists_the_typed_options():
    r = vlm_sweep("data", "build", "--help")
    assert r.returncode == 0
    for flag in ("--source", "--variants", "--translate.name", "--embed.batch_size", "--umap.n_components",
                 "--cluster.method", "--check_images"):
        assert flag in r.stdout


def test_unreadable_training_data_is_named_without_a_traceback(tmp_path, corpus):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "image": "a.jpg", "conversations": []}\n{"id": 2, "image": \n')
    r = vlm_sweep("train", "--preset", "tiny", "--data.train", str(bad), "--data.images", str(corpus / "images"),
                  "--out", str(tmp_path / "t"))
    assert r.returncode == 2 and "bad.jsonl:2: not valid JSON" in r.stderr and "Traceback" not in r.stderr


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
