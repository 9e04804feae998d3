"""Suggested replies from real human chats: the ``chitchat-dataset`` package (7,168 conversations,
131,569 reply pairs). The package's data file is located without importing the package.

Each turn after the first is a target, its prompt the preceding ``context_turns`` turns as an
``A:``/``B:`` transcript (A = whoever opened the chat). Conversations are assigned to splits by a
hash of their id, so the split never changes between runs or machines: 1 in 20 is ``test``,
1 in 20 ``val``, the rest ``train``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from polytask.errors import PolytaskError
from polytask.tasks.base import Example, read_json
from polytask.tasks.summarize import RougeTask

PACKAGE = "chitchat-dataset"
PIN = "chitchat-dataset==0.9.0"


def chitchat_file() -> Path:
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise PolytaskError(f"the chitchat task needs its data package: pip install {PIN}") from None
    path = Path(dist.locate_file("chitchat_dataset/dataset.json"))
    if not path.is_file():
        raise PolytaskError(f"{path} is missing: reinstall with pip install --force-reinstall {PIN}")
    return path


def conversation_split(conv_id: str) -> str:
    bucket = int(hashlib.sha1(conv_id.encode()).hexdigest(), 16) % 20
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


class Chitchat(RougeTask):
    name = "chitchat"
    splits = ("train", "val", "test")
    options = {"context_turns": 4, "max_input_chars": 1500}
    max_new_tokens = 48
    system = None
    user = "Suggest the next reply in this chat.\n\n{text}"
    rouge_types = ("rouge1", "rougeL")

    def source_files(self, split: str) -> list[Path]:
        return [chitchat_file()]

    def _read(self, split: str) -> list[Example]:
        path = chitchat_file()
        data = read_json(path)
        context_turns = self.opts["context_turns"]
        out = []
        for conv_id, conv in data.items():
            if conversation_split(conv_id) != split:
                continue
            turns = [g for g in conv["messages"] if g]
            opener = turns[0][0]["sender"] if turns else None
            lines = [("A" if g[0]["sender"] == opener else "B", "\n".join(m["text"].strip() for m in g)) for g in turns]
            for i in range(1, len(lines)):
                context = lines[max(0, i - context_turns) : i]
                # Clip from the left: the latest turns matter most for the reply.
                text = "\n".join(f"{who}: {t}" for who, t in context)[-self.opts["max_input_chars"] :]
                out.append(Example(f"{conv_id}/{i}", {"text": text}, lines[i][1]))
        return out

    def render(self, ex: Example):
        return [{"role": "user", "content": self.user.format(text=ex.inputs["text"])}], ex.target


TASK_CLASSES = [Chitchat]
