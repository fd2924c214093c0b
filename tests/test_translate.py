"""English → Indonesian translation: registry, dictd dictionary, tiny seq2seq model, conversations, cache, UDF.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_translate.py
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_pipeline.translate import (
    DictionaryNotFoundError,
    TranslateBatch,
    Translation,
    TranslationCache,
    Translator,
    TranslatorConfig,
    available_translators,
    build_translator,
    dictd_b64_decode,
    translate_conversations,
)
from data_pipeline.translate.dictionary import DICTD_B64
from vlm_core.base.errors import ConfigError
from vlm_core.config import IMAGE_MARKER

REAL_DICTIONARY = Path("/usr/share/dictd/freedict-eng-ind")

# (headword as printed in the entry, entry body after the headword line). Quirks copied from the real file:
# numbered senses, the "kucing 2." numbering glitch, several translations per line, two entries for one key.
FIXTURE_ENTRIES = [
    ("Man", "<pn>\nmanusia, orang\ngenus Homo"),
    ("man", "<n>\n1. pria, laki-laki\nadult male human\n2. manusia\nhuman"),
    ("cat", "<n>\nkucing 2.\ndomestic species\n 3.\nmember of the family Felidae"),
    ("red", "<adj>\nmerah\ncolour"),
    ("sit", "<v>\nduduk\nto be seated"),
    ("on", "<preposition>\natas, di atas\npositioned at the upper surface of"),
    ("the", "<article>\nitu, sang, si\narticle"),
    ("table", "<n>\nmeja\nfurniture"),
    ("what", "<pronoun>\napa"),
    ("be", "<v>\nadalah\nto exist"),
    ("in", "<preposition>\n1. di dalam, di\ncontained by"),
    ("image", "<n>\n1. gambar\ngraphical representation"),
    ("describe", "<v>\nmenggambarkan\nto represent in words"),
    ("short story", "<n>\ncerita pendek, cerpen\nwork of fiction"),
    ("short", "<adj>\npendek\nof little length"),
    ("story", "<n>\ncerita\naccount of events"),
    ("yes", "<adv>\nya"),
]


def b64_encode(n: int) -> str:
    digits = ""
    while True:
        digits = DICTD_B64[n % 64] + digits
        n //= 64
        if n == 0:
            return digits


def write_dictd(folder: Path, entries=FIXTURE_ENTRIES) -> str:
    """A dictd dictionary (``.index`` + gzip ``.dict.dz``) like Debian's FreeDict files; returns the prefix."""
    data, index = b"", []
    for head, body in entries:
        entry = f"{head} /pron/ {body}\n".encode()
        index.append((head.lower(), len(data), len(entry)))
        data += entry
    prefix = folder / "fixture-eng-ind"
    lines = [f"00databaseshort\t{b64_encode(0)}\t{b64_encode(1)}"]
    lines += [f"{key}\t{b64_encode(off)}\t{b64_encode(n)}" for key, off, n in sorted(index)]
    Path(f"{prefix}.index").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with gzip.open(f"{prefix}.dict.dz", "wb") as f:
        f.write(data)
    return str(prefix)


@pytest.fixture(scope="module")
def dict_prefix(tmp_path_factory) -> str:
    return write_dictd(tmp_path_factory.mktemp("dictd"))


@pytest.fixture()
def dictionary(dict_prefix) -> Translator:
    return build_translator(TranslatorConfig(name="dictionary", dictionary=dict_prefix, min_coverage=0.5))


class CountingTranslator:
    """Test double that records what reaches the real translator it wraps."""

    def __init__(self, inner: Translator) -> None:
        self.inner = inner
        self.id = inner.id
        self.calls: list[list[str]] = []

    def translate(self, texts: list[str]) -> list[Translation]:
        self.calls.append(list(texts))
        return self.inner.translate(texts)


# ------------------------------------------------------------------------------------------ registry/config


def test_registry_lists_translators_and_rejects_unknown_names():
    assert available_translators() == ["dictionary", "none", "seq2seq"]
    with pytest.raises(ConfigError, match=r"translate\.name: 'google' is not one of dictionary, none, seq2seq"):
        TranslatorConfig(name="google")
    cfg = TranslatorConfig()
    cfg.name = "google"  # bypassing validation still hits the registry's check
    with pytest.raises(ConfigError, match="dictionary, none, seq2seq"):
        build_translator(cfg)


@pytest.mark.parametrize("kwargs, field", [
    ({"min_coverage": 1.5}, "translate.min_coverage"),
    ({"name": "seq2seq"}, "translate.model"),
    ({"name": "seq2seq", "model": "m", "revision": ""}, "translate.revision"),
    ({"batch_size": 0}, "translate.batch_size"),
    ({"max_new_tokens": 0}, "translate.max_new_tokens"),
    ({"tgt_lang": " ind_Latn"}, "translate.tgt_lang"),
])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        TranslatorConfig(**kwargs)


def test_config_round_trips_through_a_dict_and_rejects_unknown_keys():
    cfg = TranslatorConfig(name="seq2seq", model="some/folder", src_lang="eng_Latn", tgt_lang="ind_Latn")
    assert TranslatorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="modle"):
        TranslatorConfig.from_dict({"modle": "x"})


def test_none_translator_returns_texts_unchanged():
    translator = build_translator(TranslatorConfig(name="none"))
    texts = ["A cat.", "", "  spaced  \n"]
    assert translator.translate(texts) == [Translation(t, True, None) for t in texts]
    assert translator.id == "none"


# ---------------------------------------------------------------------------------------------- dictionary


def test_dictd_base64_numbers_decode_as_in_the_real_index():
    assert [dictd_b64_decode(s) for s in ("A", "B", "b", "BA", "/", "po")] == [0, 1, 27, 64, 63, 41 * 64 + 40]
    assert all(dictd_b64_decode(b64_encode(n)) == n for n in (0, 63, 64, 4095, 123456))


def test_dictionary_translates_words_and_keeps_punctuation_numbers_and_spaces(dictionary):
    [out] = dictionary.translate(["The red cat sits on the table, 2 times!\n  What is in the image?"])
    assert out.ok and out.reason is None
    # "times" is unknown (1 of 13 words); "sits"/"is" resolve to "sit"/"be"; case of the first letter kept.
    assert out.text == "Itu merah kucing duduk atas itu meja, 2 times!\n  Apa adalah di dalam itu gambar?"


def test_dictionary_prefers_exact_headword_and_longest_phrase(dictionary):
    texts = ["man", "MAN", "short story", "short  story", "cats' table"]
    assert [t.text for t in dictionary.translate(texts)] == ["pria", "PRIA", "cerita pendek", "pendek  cerita",
                                                             "kucing' meja"]


def test_dictionary_fails_below_min_coverage_with_the_coverage_in_the_reason(dictionary):
    low, empty = dictionary.translate(["The quick brown fox jumps over the lazy dog", "123 ..."])
    assert not low.ok and low.text is None
    assert low.reason.startswith("coverage 0.22 < 0.50 (2/9 words found; unknown: quick, brown, fox, jumps, over")
    assert empty.ok and empty.text == "123 ..."  # no words: nothing to translate


def test_missing_dictionary_names_the_path_and_the_fix(tmp_path):
    prefix = tmp_path / "absent"
    with pytest.raises(DictionaryNotFoundError) as info:
        build_translator(TranslatorConfig(name="dictionary", dictionary=str(prefix)))
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert f"{prefix}.index" in message
    assert "apt-get install dict-freedict-eng-ind" in message and "--translate.dictionary PREFIX" in message


def test_real_freedict_dictionary():
    """Debian's real FreeDict file through the default prefix. CI installs the package (.ci/run) and fails here when
    it is missing (the environment variable CI set); elsewhere the test is skipped, saying how to install it."""
    import os

    if not Path(f"{REAL_DICTIONARY}.index").is_file():
        missing = (f"{REAL_DICTIONARY}.index is missing: Debian's dict-freedict-eng-ind is not installed "
                   f"(apt-get install -y dict-freedict-eng-ind; scripts/setup.sh tries, best effort, as root)")
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off"):  # CI services: "true"
            pytest.fail(f"CI must run this test: {missing}")
        pytest.skip(missing)
    translator = build_translator(TranslatorConfig(name="dictionary"))
    out = translator.translate(["The red cat sits on the table.", "xyzzy plugh"])
    assert out[0] == Translation("Itu merah kucing duduk atas itu tabel.", True, None)
    assert not out[1].ok and out[1].reason.startswith("coverage 0.00 < 0.50")
    assert translator.id.startswith("dictionary/")


# ------------------------------------------------------------------------------------------ conversations


def test_image_marker_is_kept_in_prefix_and_suffix_positions_and_every_turn(dictionary):
    convs = [
        [{"from": "human", "value": f"{IMAGE_MARKER}\nWhat is in the image?"},
         {"from": "gpt", "value": "A red cat."},
         {"from": "human", "value": "Describe the table."}, {"from": "gpt", "value": "Yes"}],
        [{"from": "human", "value": f"What is in the image?\n{IMAGE_MARKER}", "extra": 7},
         {"from": "gpt", "value": "The man sits on the table.\n\nThe cat sits."}],
    ]
    (first, err1), (second, err2) = translate_conversations(convs, dictionary)
    assert err1 is None and err2 is None
    assert [t["value"] for t in first] == [f"{IMAGE_MARKER}\nApa adalah di dalam itu gambar?", "A merah kucing.",
                                           "Menggambarkan itu meja.", "Ya"]
    assert second == [
        {"from": "human", "value": f"Apa adalah di dalam itu gambar?\n{IMAGE_MARKER}", "extra": 7},
        {"from": "gpt", "value": "Itu pria duduk atas itu meja.\n\nItu kucing duduk."}]
    assert convs[0][0]["value"] == f"{IMAGE_MARKER}\nWhat is in the image?"  # input untouched


def test_a_failing_turn_fails_the_whole_conversation_without_english_fallback(dictionary):
    counting = CountingTranslator(dictionary)
    convs = [
        [{"from": "human", "value": f"{IMAGE_MARKER}\nWhat is in the image?"},
         {"from": "gpt", "value": "A fluffy ginger kitten napping lazily."}],
        [{"from": "human", "value": "What is in the image?"}, {"from": "gpt", "value": "A red cat."}],
        [{"from": "human"}],
    ]
    results = translate_conversations(convs, counting)
    (failed, reason), (ok, ok_reason), (malformed, malformed_reason) = results
    assert failed is None and reason.startswith("turn 1 (gpt): coverage 0.00 < 0.50")
    assert ok is not None and ok_reason is None
    assert malformed is None and malformed_reason == "turn 0 has no string 'value'"
    # one call for the whole batch, each distinct line once
    assert counting.calls == [["What is in the image?", "A fluffy ginger kitten napping lazily.", "A red cat."]]


# -------------------------------------------------------------------------------------------------- cache


def _convs() -> list[list[dict]]:
    return [[{"from": "human", "value": f"{IMAGE_MARKER}\nWhat is in the image?"},
             {"from": "gpt", "value": "A red cat sits on the table."}],
            [{"from": "human", "value": "Describe the image."},
             {"from": "gpt", "value": "A quick brown fox."}]]  # the gpt turn fails (coverage)


def test_cache_second_run_translates_only_the_failures(dictionary, tmp_path):
    first = CountingTranslator(dictionary)
    results = translate_conversations(_convs(), first, TranslationCache(tmp_path, first.id))
    assert len(first.calls[0]) == 4 and results[1][0] is None
    shards = list(tmp_path.glob("shard-*.jsonl"))
    assert len(shards) == 1 and len(shards[0].read_text().splitlines()) == 3  # failures are not stored

    second = CountingTranslator(dictionary)  # a "rerun": new process state, same folder
    again = translate_conversations(_convs(), second, TranslationCache(tmp_path, second.id))
    assert again == results
    assert second.calls == [["A quick brown fox."]]  # the failure is retried, nothing else

    other = CountingTranslator(build_translator(TranslatorConfig(name="none")))
    translate_conversations(_convs(), other, TranslationCache(tmp_path, other.id))
    assert len(other.calls[0]) == 4  # the key includes the translator id


def test_cache_skips_a_truncated_last_line_and_writes_its_own_shard(tmp_path):
    writer = TranslationCache(tmp_path, "t")
    writer.put_many({"one": Translation.success("satu"), "two": Translation.success("dua")})
    [shard] = tmp_path.glob("shard-*.jsonl")
    with shard.open("a") as f:
        f.write('{"key": "abc", "te')  # a process killed mid-write
    reader = TranslationCache(tmp_path, "t")
    assert reader.get_many(["one", "two", "three"]) == {"one": Translation.success("satu"),
                                                        "two": Translation.success("dua")}
    reader.put_many({"three": Translation.success("tiga")})
    assert len(list(tmp_path.glob("shard-*.jsonl"))) == 2
    assert TranslationCache(tmp_path, "t").get_many(["three"]) == {"three": Translation.success("tiga")}


def test_cache_never_stores_failures(tmp_path):
    cache = TranslationCache(tmp_path, "t")
    cache.put_many({"bad": Translation.failure("empty output"), "good": Translation.success("baik"),
                    "partial": Translation("setengah translated", False, "coverage 0.40 < 0.50")})
    assert cache.get_many(["bad", "good", "partial"]) == {"good": Translation.success("baik")}
    assert TranslationCache(tmp_path, "t").get_many(["bad", "partial"]) == {}
    lines = [json.loads(line) for p in tmp_path.glob("shard-*.jsonl") for line in p.read_text().splitlines()]
    assert [line["text"] for line in lines] == ["baik"] and set(lines[0]) == {"key", "text"}


# ---------------------------------------------------------------------------------------------- Ray UDF


def test_translate_batch_end_to_end(dict_prefix, tmp_path):
    cfg = TranslatorConfig(name="dictionary", dictionary=dict_prefix).to_dict()
    convs = _convs() + [[{"from": "human", "value": f"What is in the image?\n{IMAGE_MARKER}"},
                         {"from": "gpt", "value": "Yes"}]]
    batch = {"id": np.array(["a", "b", "c"]),
             "conversations": np.array([json.dumps(c) for c in convs], dtype=object)}
    udf = TranslateBatch(cfg, str(tmp_path / "cache"))
    out = udf(batch)
    assert list(out["id"]) == ["a", "b", "c"]
    assert out["translation_ok"].dtype == bool and out["translation_ok"].tolist() == [True, False, True]
    assert out["translation_error"][0] == out["translation_error"][2] == ""
    assert out["translation_error"][1].startswith("turn 1 (gpt): coverage")
    assert out["conversations"][1] == batch["conversations"][1]  # failed row unchanged (and flagged)
    first = json.loads(out["conversations"][0])
    assert first[1]["value"] == "A merah kucing duduk atas itu meja."
    assert json.loads(out["conversations"][2])[0]["value"] == f"Apa adalah di dalam itu gambar?\n{IMAGE_MARKER}"
    assert list(out) == ["id", "conversations", "translation_ok", "translation_error"]
    # a second actor on the same cache folder gets the same answers
    assert TranslateBatch(cfg, str(tmp_path / "cache"))(batch)["conversations"] == out["conversations"]


# ------------------------------------------------------------------------------------------------ seq2seq

VOCAB = ["<pad>", "</s>", "<unk>"] + "a cat dog sits on the mat red what is in image kucing merah .".split()


@pytest.fixture(scope="module")
def make_marian(tmp_path_factory):
    """Save a tiny random MarianMT + word-level fast tokenizer into a folder, steered by its logits bias."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")

    def make(name: str, favour: str, forced_first: str | None = None) -> str:
        torch.manual_seed(0)
        config = MarianConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
                              encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                              decoder_ffn_dim=32, max_position_embeddings=32, pad_token_id=0, eos_token_id=1,
                              decoder_start_token_id=0, forced_eos_token_id=None)
        model = MarianMTModel(config)
        with torch.no_grad():
            model.final_logits_bias[0, vocab[favour]] = 1e4  # greedy always picks this token...
        if forced_first is not None:  # ...after this forced first token
            model.generation_config.forced_bos_token_id = vocab[forced_first]
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return str(folder)

    return make


def test_seq2seq_translates_through_a_model_folder(make_marian):
    folder = make_marian("kucing-then-eos", favour="</s>", forced_first="kucing")
    translator = build_translator(TranslatorConfig(name="seq2seq", model=folder, batch_size=2, max_new_tokens=8))
    texts = ["a cat sits on the mat .", "what is in the image ?", "red dog. The cat sits", "a cat", "red"]
    out = translator.translate(texts)
    assert [t.ok for t in out] == [True] * 5 and all(t.reason is None for t in out)
    assert out[0].text == "kucing" and out[2].text == "kucing kucing"  # two sentences, each translated
    assert translator.id == f"seq2seq/v1:{folder}@:>:max_new_tokens=8"
    pinned = build_translator(TranslatorConfig(name="seq2seq", model=folder, revision="abc123", max_new_tokens=8))
    assert pinned.id == f"seq2seq/v1:{folder}@abc123:>:max_new_tokens=8"  # another revision: not the same cache


def test_seq2seq_empty_truncated_and_crashing_outputs_fail(make_marian):
    eos_only = build_translator(TranslatorConfig(name="seq2seq", model=make_marian("eos", favour="</s>")))
    assert eos_only.translate(["a cat", "the mat"]) == [Translation(None, False, "empty output")] * 2

    endless = make_marian("endless", favour="red")
    rambling = build_translator(TranslatorConfig(name="seq2seq", model=endless, max_new_tokens=4))
    [out, two] = rambling.translate(["a cat", "a cat. The mat."])
    assert not out.ok and out.text is None and out.reason == "output truncated at max_new_tokens=4"
    assert not two.ok and two.reason == "output truncated at max_new_tokens=4 (sentence 'a cat.')"

    def boom(**kwargs):
        raise RuntimeError("CUDA out of memory")

    rambling.model.generate = boom
    results = rambling.translate(["a cat", "the dog"])
    assert [(r.ok, r.text) for r in results] == [(False, None)] * 2
    assert all("RuntimeError: CUDA out of memory" in r.reason for r in results)

    with pytest.raises(ConfigError, match=r"translate\.tgt_lang: 'ind_Latn' is not a token"):
        build_translator(TranslatorConfig(name="seq2seq", model=endless, tgt_lang="ind_Latn"))


# ---------------------------------------------------------------------------- Marian with sentencepiece

EN_SENTENCES = """A red cat sits on the mat.
What is in the image?
The dog runs in the park.
A man rides a bicycle on the street.
Two children play with a ball.
The sky is blue and the sun is bright.
A woman holds a cup of coffee.
There is a small house near the river.
The car is parked next to the tree.
A bird flies over the water.
The cat sleeps on the red sofa.
What colour is the car?
The children sit at the table.
A white dog plays in the snow.
The man reads a book in the garden.
Is there a cat in the picture?
The woman walks with her dog.
A small boat sails on the lake.
The tree is tall and green.
How many birds are in the sky?""".splitlines()
ID_SENTENCES = """Seekor kucing merah duduk di atas tikar.
Apa yang ada di dalam gambar?
Anjing itu berlari di taman.
Seorang pria mengendarai sepeda di jalan.
Dua anak bermain dengan bola.
Langit berwarna biru dan matahari bersinar terang.
Seorang wanita memegang secangkir kopi.
Ada rumah kecil di dekat sungai.
Mobil itu diparkir di sebelah pohon.
Seekor burung terbang di atas air.
Kucing itu tidur di sofa merah.
Apa warna mobil itu?
Anak-anak duduk di meja.
Seekor anjing putih bermain di salju.
Pria itu membaca buku di kebun.
Apakah ada kucing di dalam gambar?
Wanita itu berjalan dengan anjingnya.
Sebuah perahu kecil berlayar di danau.
Pohon itu tinggi dan hijau.
Berapa banyak burung di langit?""".splitlines()


@dataclasses.dataclass
class SpmMarian:
    """A tiny MarianMT with a real sentencepiece ``MarianTokenizer``, in memory and saved (safetensors)."""

    model: Any
    """The in-memory ``MarianMTModel`` (eval mode): the reference its saved / converted copies must match."""
    tokenizer: Any
    """Its ``MarianTokenizer`` (source.spm / target.spm trained here, vocab.json from their pieces)."""
    folder: Path
    """``save_pretrained`` folder: model.safetensors, config, generation config, tokenizer files."""
    target_piece: str
    """The target piece the model is steered to emit (forced first token, then ``</s>``)."""

    def save_pickled(self, folder: Path, shards: int = 1) -> Path:
        """The same model as transformers 4 wrote it: ``pytorch_model.bin`` (or ``shards`` pickles + index)."""
        import torch

        folder.mkdir(parents=True)
        self.model.config.save_pretrained(folder)
        self.model.generation_config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        state = self.model.state_dict()  # shared / encoder / decoder embeddings + lm_head: one storage
        if shards == 1:
            torch.save(state, folder / "pytorch_model.bin")
            return folder
        names = list(state)
        weight_map = {}
        for k in range(shards):
            shard = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
            part = {n: state[n] for n in names[k::shards]}
            torch.save(part, folder / shard)
            weight_map.update(dict.fromkeys(part, shard))
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
            {"metadata": {"total_size": 0}, "weight_map": weight_map}))
        return folder


def build_spm_marian(root: Path) -> SpmMarian:
    """Train source / target sentencepiece models on a few sentences, build a MarianTokenizer on them, and a
    random-weight MarianMTModel (tied embeddings, as opus-mt's) steered to answer ``target_piece`` then EOS."""
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    work = root / "spm"
    work.mkdir(parents=True)
    pieces: list[str] = []
    for name, lines in (("source", EN_SENTENCES), ("target", ID_SENTENCES)):
        (work / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(input=str(work / f"{name}.txt"), model_prefix=str(work / name),
                                       vocab_size=80, model_type="unigram", bos_id=-1, character_coverage=1.0,
                                       hard_vocab_limit=False, minloglevel=2)
        sp = spm.SentencePieceProcessor(model_file=str(work / f"{name}.model"))
        pieces += [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {"</s>": 0, "<unk>": 1}  # opus-mt's layout: </s> 0, <unk> 1, ..., <pad> last
    for piece in pieces:
        if piece not in ("<s>", "</s>", "<unk>", "<pad>"):
            vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    (work / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = MarianTokenizer(source_spm=str(work / "source.model"), target_spm=str(work / "target.model"),
                                vocab=str(work / "vocab.json"))
    target_piece = max((p for p in vocab if p.startswith("▁") and len(p) > 3), key=lambda p: (len(p), p))

    torch.manual_seed(0)
    pad = vocab["<pad>"]
    config = MarianConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=pad, eos_token_id=0,
                          decoder_start_token_id=pad, forced_eos_token_id=0)
    model = MarianMTModel(config).eval()
    with torch.no_grad():
        model.final_logits_bias[0, 0] = 1e4  # a buffer: a conversion that lost it would no longer stop at once
    model.generation_config.forced_bos_token_id = vocab[target_piece]
    folder = root / "marian"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return SpmMarian(model=model, tokenizer=tokenizer, folder=folder, target_piece=target_piece)



def test_a_marian_tokenizer_resolves_through_autotokenizer(spm_marian):
    from transformers import AutoTokenizer, MarianTokenizer

    assert sorted(p.name for p in spm_marian.folder.iterdir() if "spm" in p.name or "vocab" in p.name) == [
        "source.spm", "target.spm", "vocab.json"]
    tok = AutoTokenizer.from_pretrained(spm_marian.folder)  # transformers maps marian here only with sentencepiece
    assert type(tok) is MarianTokenizer
    enc = tok(EN_SENTENCES[:3])
    assert all(ids[-1] == tok.eos_token_id == 0 for ids in enc["input_ids"]) and tok.pad_token_id == len(tok) - 1
    assert tok.batch_decode(enc["input_ids"], skip_special_tokens=True) == EN_SENTENCES[:3]
    target = tok(text_target=ID_SENTENCES[:2])["input_ids"]  # the target side has its own sentencepiece model
    assert tok.batch_decode(target, skip_special_tokens=True) == ID_SENTENCES[:2]
    assert tok.unk_token_id not in enc["input_ids"][0] + target[0]


def test_seq2seq_translates_with_a_sentencepiece_marian(spm_marian):
    import torch

    translator = build_translator(TranslatorConfig(name="seq2seq", model=str(spm_marian.folder)))
    assert type(translator.tokenizer).__name__ == "MarianTokenizer"
    out = translator.translate(["A red cat sits on the mat. The dog runs in the park.", "What is in the image?"])
    word = spm_marian.target_piece.lstrip("▁")
    assert [(t.ok, t.text) for t in out] == [(True, f"{word} {word}"), (True, word)]
    enc = spm_marian.tokenizer(EN_SENTENCES[:4], return_tensors="pt", padding=True)
    labels = spm_marian.tokenizer(text_target=ID_SENTENCES[:4], return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        assert torch.equal(translator.model(**enc, labels=labels).logits,
                           spm_marian.model(**enc, labels=labels).logits)
