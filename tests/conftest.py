"""Shared fixtures. Environment is set before anything imports transformers, Ray or wandb.

Two tiers: ``slow`` marks every test that starts a Ray cluster (any test using :data:`SLOW_FIXTURES`), runs a data
build, a sweep, a process group or a ``vlm-sweep`` process, loads the real packaged models or opens a browser (the
modules in :data:`SLOW_MODULES`, and tests marked one by one); the rest — unit and component tests — is the fast
loop.

    pytest -q                   # the whole suite (what CI runs)
    pytest -q -m "not slow"     # the fast loop, while working on it
    pytest -q -n 0 tests/...    # one process (pyproject.toml's addopts run two pytest-xdist workers)

Two workers (``-n 2``) each get whole modules, longest first (:func:`pytest_xdist_make_scheduler`), each with its own
local Ray cluster (``ray_local``); tests that start clusters of their own pick free ports, so two never collide.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_MODE", "offline")

import json  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vlm_core.config import FormatConfig, LMConfig, VLMConfig  # noqa: E402
from vlm_core.data.dataset import read_records, split_records  # noqa: E402
from vlm_core.presets import get_preset  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                   "<|finetune_right_pad_id|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>"]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SLOW_FIXTURES = {"ray_local", "two_stage_sweep"}
"""A test that uses one of these starts (or shares) a Ray cluster: slow, whatever its module."""
SLOW_MODULES = {"test_sweep", "test_stage2_resume", "test_main_job", "test_job_submit", "test_data_build",
                "test_faults", "test_distributed", "test_paper_shaped", "test_gpu_step", "test_ray_auth",
                "test_fixed_prompts", "test_html_report", "test_assets", "test_benchmark_eval", "test_sweep_eval",
                "test_rehearsal", "test_multinode"}
"""Modules whose every test is slow: sweeps, data builds, process groups, Ray clusters started in subprocesses,
the paper-shaped models, the packaged real models, the headless browser."""


LONGEST_FIRST = ("test_multinode", "test_sweep", "test_sweep_eval", "test_stage2_resume", "test_main_job",
                 "test_readme_claims", "test_rehearsal", "test_gpu_step", "test_faults", "test_search",
                 "test_data_build", "test_paper_shaped", "test_fixed_prompts", "test_umap_kernels",
                 "test_distributed", "test_export_lmms_eval")
"""Modules handed out first when the suite runs on several workers (``-n``, pyproject.toml's addopts): the longest
units of work (``--durations`` of a whole run) go out first, so that no worker is left with one long module at the
end while the other idles. Within a module the order is the file's."""
TWO_STAGE_SWEEP_MODULES = {"test_sweep", "test_sweep_eval", "test_stage2_resume"}
"""The modules whose tests read the session's two-stage sweep (``two_stage_sweep``): one worker runs them all, so the
sweep is run once."""


def pytest_xdist_make_scheduler(config, log):
    """Workers get whole modules (a module's fixtures — a data build, a sweep, a cluster — are built once), the
    modules of :data:`TWO_STAGE_SWEEP_MODULES` as one unit, in collection order (:data:`LONGEST_FIRST`).

    pytest-xdist's ``--dist loadgroup`` would say this with marks, but 3.8 renames ``item._nodeid``, which pytest 9
    no longer reads, so its groups do nothing; this is ``--dist loadscope`` with our scope."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "two_stage_sweep" if Path(path).stem in TWO_STAGE_SWEEP_MODULES else path

    config.option.loadscopereorder = False
    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        module = item.module.__name__.split(".")[-1]
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if "two_stage_sweep" in item.fixturenames and module not in TWO_STAGE_SWEEP_MODULES:
            raise pytest.UsageError(f"{item.nodeid} reads two_stage_sweep: add {module} to "
                                    "tests/conftest.py's TWO_STAGE_SWEEP_MODULES (the sweep is built once per worker)")

    def rank(item) -> tuple[int, int]:
        module = item.module.__name__.split(".")[-1]
        first = LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
        return (0 if item.get_closest_marker("slow") else 1, first)

    items.sort(key=rank)


@pytest.fixture(scope="session")
def tiny_cfg() -> VLMConfig:
    return get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
    from vlm_core.model.vlm import VisionLanguageModel

    return VisionLanguageModel.build(tiny_cfg).eval()


@pytest.fixture(scope="session")
def llama_tokenizer_dir(tmp_path_factory) -> Path:
    """A Llama-3-style tokenizer: the real SmolLM2 BPE plus Llama 3's special tokens and chat template."""
    from vlm_core.assets.paper_shaped import chat_template
    from vlm_core.model.language_model import load_tokenizer

    tok = load_tokenizer(LMConfig(source="tiny"))
    tok.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS}, replace_extra_special_tokens=False)
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tok.chat_template = chat_template()  # vlm_core/assets/model_configs/llama-3.2-1b-instruct/chat_template.jinja
    out = tmp_path_factory.mktemp("llama3_tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def llama_style_cfg(tiny_cfg, llama_tokenizer_dir) -> VLMConfig:
    cfg = VLMConfig.from_dict(tiny_cfg.to_dict())
    cfg.lm.tokenizer = str(llama_tokenizer_dir)
    return cfg


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from data_pipeline.sample_corpus import write_sample_corpus

    out = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(out, n_train_images=60, n_eval_questions=20)
    return out


def formatter_for(cfg: VLMConfig, mode: str = "chat", max_length: int = 256, num_image_tokens: int = 4):
    from vlm_core.model.conversation import ConversationFormatter
    from vlm_core.model.language_model import load_tokenizer, resolve_image_token

    tok = load_tokenizer(cfg.lm)
    image_token, _ = resolve_image_token(tok, cfg.lm.image_token)
    return ConversationFormatter(tok, image_token, FormatConfig(mode=mode, max_length=max_length), num_image_tokens)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster for the whole test run (small object store, loopback dashboard)."""
    import ray

    from vlm_core.base.ray_env import init_ray

    resources = init_ray(num_cpus=2, object_store_bytes=300 * 1024 * 1024)
    yield resources
    ray.shutdown()


def _write(path: Path, rows: list[dict]) -> None:
    table = pa.table({"id": [r["id"] for r in rows], "image": [r["image"] for r in rows],
                      "conversations": [json.dumps(r["conversations"]) for r in rows]})
    pq.write_table(table, path)


def _gibberish(rows: list[dict], seed: int = 0) -> list[dict]:
    """The same images with answers of random rare characters: a validation set no training makes easy."""
    rng = random.Random(seed)
    return [{**r, "conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                                    {"from": "gpt", "value": "".join(chr(rng.randint(0x4E00, 0x9FFF))
                                                                     for _ in range(40))}]} for r in rows]


@pytest.fixture(scope="session")
def variants(corpus, tmp_path_factory):
    """Both dataset variants the study names, in `data build`'s layout (small, no Ray Data needed).

    20kUmap validates on its own training rows (its loss falls as it trains); 10kRandom validates on gibberish
    (its loss cannot fall). So when stage 2 runs 20kUmap's continuation first, ASHA must stop 10kRandom's at
    the first rung: a deterministic pruning decision to test, made by the real scheduler on real losses."""
    out = tmp_path_factory.mktemp("variants")
    records = [r for r in read_records(corpus / "sharegpt4v_sample.jsonl") if r["image"].startswith("coco/")]
    umap_rows, random_rows = records[:16], records[16:32]
    for name, (train, val) in {"20kUmap": (umap_rows, umap_rows[:4]),
                               "10kRandom": (split_records(random_rows, 0.25)[0], _gibberish(random_rows[:4]))
                               }.items():
        (out / name).mkdir()
        _write(out / name / "train-00000.parquet", train)
        _write(out / name / "val-00000.parquet", val)
    return out


WANDB_SECRET = "vlm-sweep-test-key-0123456789abcdef0123456789abcdef"
"""A user's W&B key in the environment during ``two_stage_sweep``: it must never land in a file."""


def _two_stage_sweep(variants, corpus, out: Path, runner: str):
    import tempfile

    from sweeps.driver import SweepConfig, run_sweep

    cfg = SweepConfig(data=str(variants), images=str(corpus / "images"), preset="tiny", stage="all",
                      paper_ids=[3, 9], out=str(out), wandb="offline", runner=runner)
    before = set(Path(tempfile.gettempdir()).glob("vlm-trial-*"))
    previous = os.environ.get("WANDB_API_KEY")
    os.environ["WANDB_API_KEY"] = WANDB_SECRET
    try:
        result = run_sweep(cfg)
    finally:
        if previous is None:
            os.environ.pop("WANDB_API_KEY", None)
        else:
            os.environ["WANDB_API_KEY"] = previous
    assert set(Path(tempfile.gettempdir()).glob("vlm-trial-*")) == before  # trial workdirs removed (GBs each)
    return cfg, result, out


@pytest.fixture(scope="session")
def two_stage_sweep(ray_local, variants, corpus, tmp_path_factory):
    """The tiny two-stage sweep of paper rows 3 and 9 (stage 2: 20kUmap continues, ASHA stops 10kRandom at rung
    1), run once in-process with wandb offline on the default runner (CPU trials train in the Tune trial itself):
    (config, result, out folder). tests/test_sweep.py reads it, and tests/test_stage2_resume.py takes it as the
    uninterrupted reference (its lineage and its rung decisions). Tests must not change its lineage, checkpoints
    or rung decisions (the report files, trials.csv and token_lengths.json are rewritten by some)."""
    return _two_stage_sweep(variants, corpus, tmp_path_factory.mktemp("sweep") / "tiny-study", "auto")


@pytest.fixture(scope="module")
def spm_marian(tmp_path_factory):
    """A real MarianTokenizer on sentencepiece models trained on the fly, with a random-weight MarianMTModel
    (``tests.test_translate.build_spm_marian``), for test_translate.py and test_assets_convert.py."""
    from tests.test_translate import build_spm_marian

    return build_spm_marian(tmp_path_factory.mktemp("spm-marian"))


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
"""Ray's per-node agents: they hold no CPUs or memory of the cluster, and when their node dies with a SIGKILLed
driver they exit only after Ray's hard-coded 60 s attempt to report it to the dead GCS (measured: 62 s)."""


def driver_ray_processes(proc) -> dict:
    """The processes of a driver's own local Ray (GCS, raylet, workers, actors, agents), each with its command line,
    read while they run."""
    import psutil

    names = {}
    for p in psutil.Process(proc.pid).children(recursive=True):
        try:
            names[p] = " ".join(p.cmdline())
        except psutil.Error:
            names[p] = ""
    return names


def assert_ray_processes_exit(procs: dict, what: str) -> None:
    """Every one of ``procs`` (:func:`driver_ray_processes`) exits within 90 s but Ray's two agents
    (:data:`RAY_AGENTS`), the only processes allowed to linger, which are killed here instead of waited for (as is
    anything left, after the check)."""
    import psutil

    agents = [p for p, name in procs.items() if name.startswith(RAY_AGENTS)]
    _, alive = psutil.wait_procs([p for p in procs if p not in agents], timeout=90)
    leftovers = [procs[p] for p in alive]
    for p in alive + agents:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert leftovers == [], f"Ray processes outlived {what}"


def sigkill_driver(proc, what: str = "the driver") -> None:
    """SIGKILL a sweep driver (a preempted head, the OOM killer) and check that its own local Ray goes with it
    (:func:`assert_ray_processes_exit`)."""
    import signal

    ray_procs = driver_ray_processes(proc)
    assert any("raylet" in name for name in ray_procs.values())  # the driver's own local Ray
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert_ray_processes_exit(ray_procs, f"the killed driver ({what})")

