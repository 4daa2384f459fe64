"""What a reader sees and does, without HTTP: the access list and access tokens, each reader's pair
order, the pair views (label set, opaque image ids, checklist findings), progress, and validated
answers. Every call names the reader and carries the reader's token: an id alone gets nowhere.

Nothing here reads the key: a pair view cannot name a source because this class never knows one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from craft_ray.errors import StudyError
from craft_ray.knowledge.checklists import load_knowledge
from craft_ray.study.access import token_matches
from craft_ray.study.layout import MANIFEST, StudyDir, check_reader_id
from craft_ray.study.store import Answer, AnswerStore

CHOICES = ("left", "right", "none")


class NotOnAccessList(StudyError):
    """The reader id is not on the study's access list, or the access token is missing or wrong."""


class UnknownItem(StudyError):
    """No such pair or image in the study."""


class InvalidAnswer(StudyError):
    """An answer that names findings the pair does not have, or a choice that does not exist."""


class ReaderDesk:
    def __init__(self, root: str | Path):
        self.study = StudyDir(root)
        manifest = self.study.manifest()
        self.seed = manifest.seed
        self._tokens, self._manifest_stamp = dict(manifest.reader_tokens), self._stamp()
        self.pairs = {p["pair_id"]: p for p in self.study.pairs()}
        self._images = {
            p[side]: pid for pid, p in self.pairs.items() for side in ("left_image", "right_image")
        }
        knowledge = load_knowledge()
        self._findings = {
            label: [
                {"id": i.id, "label": label, "text": i.present}
                for i in knowledge.for_label(manifest.dataset, label)
            ]
            for label in manifest.labels
        }
        self.store = AnswerStore(self.study.answers_path)

    def _stamp(self) -> tuple[int, int, int]:
        stat = (self.study.root / MANIFEST).stat()
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def check_reader(self, reader: str, token: str | None) -> None:
        """The reader must be on the access list with this token. The manifest is read again when it
        has changed (one stat per request): readers added and tokens issued or replaced while the
        app runs (`craft study token`) count at once, without a restart, and a replaced token stops
        working. An unknown reader and a wrong token get the same answer, so ids cannot be probed."""
        try:
            check_reader_id(reader)
        except StudyError as exc:
            raise NotOnAccessList(str(exc)) from None
        if not token:
            raise NotOnAccessList(
                f"reader '{reader}': send the reader's access token (from `craft study create` or "
                "`craft study token`) as 'Authorization: Bearer <token>'"
            )
        stamp = self._stamp()
        if stamp != self._manifest_stamp:
            self._tokens, self._manifest_stamp = dict(self.study.manifest().reader_tokens), stamp
        if not token_matches(token, self._tokens.get(reader)):
            raise NotOnAccessList(
                f"reader '{reader}' with this access token is not on this study's access list"
            )

    def order(self, reader: str) -> list[str]:
        """The reader's own pair order (seeded by study seed and reader id): fixed across sessions."""
        digest = int.from_bytes(hashlib.sha256(reader.encode()).digest()[:8], "big")
        ids = sorted(self.pairs)
        return [ids[i] for i in np.random.default_rng([self.seed, digest]).permutation(len(ids))]

    def findings(self, pair_id: str) -> list[dict]:
        return [item for label in self.pairs[pair_id]["labels"] for item in self._findings.get(label, [])]

    def view(self, reader: str, token: str | None, pair_id: str) -> dict:
        """A pair as the reader sees it, with the reader's current answer."""
        self.check_reader(reader, token)
        return self._view(reader, pair_id)

    def _view(self, reader: str, pair_id: str, answers: dict[tuple[str, str], Answer] | None = None) -> dict:
        if pair_id not in self.pairs:
            raise UnknownItem(f"no pair '{pair_id}' in this study")
        pair = self.pairs[pair_id]
        answers = self.store.latest(reader) if answers is None else answers
        answer = answers.get((reader, pair_id))
        return {
            "pair_id": pair_id,
            "position": self.order(reader).index(pair_id) + 1,
            "labels": list(pair["labels"]),
            "left": f"/api/readers/{reader}/images/{pair['left_image']}",
            "right": f"/api/readers/{reader}/images/{pair['right_image']}",
            "findings": self.findings(pair_id),
            "answer": answer.public() if answer else None,
        }

    def progress(self, reader: str, token: str | None) -> dict:
        self.check_reader(reader, token)
        answers = self.store.latest(reader)
        order = self.order(reader)
        pending = [pid for pid in order if (reader, pid) not in answers]
        answered = [a for a in self.store.history(reader) if a.revision == 0]
        return {
            "reader": reader,
            "total": len(order),
            "done": len(order) - len(pending),
            "next": self._view(reader, pending[0], answers) if pending else None,
            "last": answered[-1].pair_id if answered else None,
        }

    def answer(
        self,
        reader: str,
        token: str | None,
        pair_id: str,
        choice: str,
        wrong_left: list[str],
        wrong_right: list[str],
        time_ms: int,
        change: bool,
    ) -> Answer:
        self.check_reader(reader, token)
        if pair_id not in self.pairs:
            raise UnknownItem(f"no pair '{pair_id}' in this study")
        if choice not in CHOICES:
            raise InvalidAnswer(f"choice must be one of {CHOICES}, got {choice!r}")
        known = {item["id"] for item in self.findings(pair_id)}
        unknown = sorted((set(wrong_left) | set(wrong_right)) - known)
        if unknown:
            raise InvalidAnswer(f"finding(s) {unknown} are not on the checklist of pair '{pair_id}'")
        return self.store.add(
            reader, pair_id, choice, sorted(set(wrong_left)), sorted(set(wrong_right)), time_ms, change
        )

    def image(self, reader: str, token: str | None, image_id: str) -> Path:
        self.check_reader(reader, token)
        if image_id not in self._images:  # only ids of the study: no path from the request reaches the disk
            raise UnknownItem(f"no image '{image_id}' in this study")
        return self.study.image_path(image_id)
