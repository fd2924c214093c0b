"""Load and validate ShareGPT4V records, streaming; each bad row becomes a rejection with its reason.

Pure functions, unit-testable without Ray:

* ``plan_shards(path, shard_lines)``: a JSON Lines file → byte-range shards (one pass, constant memory);
  a JSON list is first rewritten as JSON Lines with ``ijson`` (streamed, never loaded whole);
* ``read_shard(shard)``: the rows of one shard, each validated by ``validate_record``;
* ``validate_record(obj)``: required fields, exactly one ``<image>`` marker, moved to the front of the first
  human turn, multi-turn conversations kept, turns alternating human/gpt; the English human and assistant
  turns are also kept as two flat strings (``human_text``, ``assistant_text``: what ``--embed.text`` embeds).

Rows are flat (``conversations`` is JSON text) because nested list-of-struct columns fall back to pickle in
Ray Data. A rejected row keeps its line number, id, reason and a prefix of the raw text.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from vlm_core.base.errors import FormatError, VlmSweepError
from vlm_core.config import IMAGE_MARKER
from vlm_core.model.conversation import normalize_messages

RAW_PREFIX = 300  # characters of a rejected row kept for the report

# Columns of every row flowing through the pipeline (kept and rejected alike).
# ``human_text`` / ``assistant_text``: the English human / assistant turns, ``<image>`` removed, joined by newlines
# (what ``--embed.text`` chooses from; flat strings, never lists).
ROW_COLUMNS = ("id", "image", "conversations", "human_text", "assistant_text", "n_turns", "line", "reason", "stage")


class SourceError(VlmSweepError, ValueError):
    """The source file itself cannot be read; the message names it and the fix."""


@dataclass(frozen=True)
class Shard:
    path: str
    start: int  # byte offset
    end: int  # byte offset (exclusive)
    first_line: int  # 1-based line number of the shard's first line


def _is_json_list(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def json_list_to_jsonl(src: Path, dst: Path) -> tuple[int, str | None]:
    """Stream a JSON list into JSON Lines. Returns (records written, error or None).

    A malformed or truncated list keeps every record before the fault; the error says where it stopped.
    """
    import ijson

    n, error = 0, None
    tmp = dst.with_suffix(".tmp")
    with src.open("rb") as fin, tmp.open("w", encoding="utf-8") as fout:
        try:
            for obj in ijson.items(fin, "item", use_float=True):
                fout.write(json.dumps(obj, ensure_ascii=False) + "\n")
                n += 1
        except (ijson.JSONError, UnicodeDecodeError) as e:
            error = f"{src}: the JSON list is malformed or truncated after record {n} ({e})"
    tmp.replace(dst)
    return n, error


def plan_shards(path: str | Path, shard_lines: int) -> list[Shard]:
    """Byte ranges of ``shard_lines`` lines each, found in one streaming pass."""
    path = Path(path)
    shards, start, line, first = [], 0, 0, 1
    offset = 0
    with path.open("rb") as f:
        for raw in f:
            offset += len(raw)
            line += 1
            if line - first + 1 == shard_lines:
                shards.append(Shard(str(path), start, offset, first))
                start, first = offset, line + 1
    if offset > start:
        shards.append(Shard(str(path), start, offset, first))
    return shards


def _reject(line: int, rid: Any, reason: str, raw: str, stage: str = "validate") -> dict[str, Any]:
    return {"id": "" if rid is None else str(rid), "image": "", "conversations": raw[:RAW_PREFIX],
            "human_text": "", "assistant_text": "", "n_turns": 0, "line": line, "reason": reason, "stage": stage}


def validate_record(obj: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A parsed record → (normalised fields, None) or (None, reason)."""
    if not isinstance(obj, dict):
        return None, f"not a JSON object ({type(obj).__name__})"
    rid = obj.get("id")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid).strip() == "":
        return None, "missing or empty 'id'"
    image = obj.get("image")
    if not isinstance(image, str) or not image.strip():
        return None, "missing or empty 'image'"
    conv = obj.get("conversations")
    if not isinstance(conv, list) or not conv:
        return None, "missing or empty 'conversations'"
    try:
        messages = normalize_messages(conv)
    except FormatError as e:
        return None, f"bad conversation: {e}"
    if messages[0]["role"] == "system":
        messages = messages[1:]
    if not messages or messages[-1]["role"] != "assistant":
        return None, "bad conversation: must end with a gpt turn"
    markers = [m["content"].count(IMAGE_MARKER) for m in messages]
    if sum(markers) == 0:
        return None, "no <image> marker"
    if sum(markers) > 1:
        return None, f"{sum(markers)} <image> markers (exactly one is supported)"
    if markers[0] != 1:
        return None, "<image> marker is not in the first human turn"
    first = messages[0]["content"].replace(IMAGE_MARKER, "").strip()
    if not first:
        return None, "the first human turn has nothing but <image>"
    turns = [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in messages]
    turns[0]["value"] = f"{IMAGE_MARKER}\n{first}"
    human, assistant = (
        "\n".join(m["content"].replace(IMAGE_MARKER, "").strip() for m in messages if m["role"] == role)
        for role in ("user", "assistant"))
    return {"id": str(rid), "image": image.strip(), "conversations": json.dumps(turns, ensure_ascii=False),
            "human_text": human, "assistant_text": assistant, "n_turns": len(turns)}, None


def read_shard(shard: Shard) -> Iterator[dict[str, Any]]:
    """Rows of one shard, validated; bad lines become rejection rows (never dropped)."""
    with open(shard.path, "rb") as f:
        f.seek(shard.start)
        data = f.read(shard.end - shard.start)
    for i, raw in enumerate(data.split(b"\n")):
        line = shard.first_line + i
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield _reject(line, None, f"not UTF-8 ({e.reason} at byte {e.start})", raw.decode("utf-8", "replace"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield _reject(line, None, f"malformed JSON ({e.msg} at column {e.colno})", text)
            continue
        fields, reason = validate_record(obj)
        if reason:
            yield _reject(line, obj.get("id") if isinstance(obj, dict) else None, reason, text)
        else:
            yield {**fields, "line": line, "reason": "", "stage": ""}


def rows_to_batch(rows: list[dict[str, Any]]) -> dict[str, list]:
    return {c: [r[c] for r in rows] for c in ROW_COLUMNS}


def shard_to_dict(shard: Shard) -> dict[str, Any]:
    return asdict(shard)
