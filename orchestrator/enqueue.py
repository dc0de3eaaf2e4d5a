"""Known configurations tried first (`tune --enqueue FILE`): a warm start.

The file holds points of the search space, each a mapping from parameter name to value: a
JSON list of objects (or one object), JSON Lines (one object a line), or TOML with one
`[[trial]]` table per point. A point may leave parameters out; the sampler draws those.
Every point is checked against the space before anything is stored, and a point is
queued once per study: its digest is kept in the study's system attributes, so running
the same command again on a resumed study queues nothing new.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import optuna

from orchestrator.errors import ArgumentsError, SpaceError
from orchestrator.space import FloatParam, SearchSpace, Value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

logger = logging.getLogger(__name__)

# The study system attribute holding the digests of the points already queued.
ENQUEUED_ATTR = "orchestrate:enqueued"


def read_points(path: Path) -> list[dict[str, Value]]:
    """The points in `path`, by its suffix: .json, .jsonl, or .toml."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ArgumentsError(f"--enqueue {path}: cannot read it ({err.strerror})") from None

    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            document = tomllib.loads(text)
            unknown = sorted(set(document) - {"trial"})
            if unknown:
                raise ArgumentsError(
                    f"--enqueue {path}: unknown keys {unknown}; write one [[trial]] table "
                    "per configuration"
                )
            points: object = document.get("trial", [])
        elif suffix == ".jsonl":
            points = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif suffix == ".json":
            loaded = json.loads(text)
            points = [loaded] if isinstance(loaded, dict) else loaded
        else:
            raise ArgumentsError(
                f"--enqueue {path}: unknown kind of file {suffix or '(no suffix)'}; use .json "
                "(a list of objects), .jsonl (one object a line) or .toml ([[trial]] tables)"
            )
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ArgumentsError(
            f"--enqueue {path} is not valid {suffix[1:].upper()}: {err}"
        ) from None

    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ArgumentsError(
            f"--enqueue {path} must hold configurations, each a mapping of parameter to value"
        )
    if not points:
        raise ArgumentsError(f"--enqueue {path} holds no configuration")
    return points


def check_points(
    points: Sequence[Mapping[str, Value]], space: SearchSpace, path: Path
) -> tuple[dict[str, Value], ...]:
    """The points, each checked to name parameters of the space with values they can take;
    a whole number given for a float parameter becomes a float."""
    floats = {p.name for p in space.params if isinstance(p, FloatParam)}
    checked = []
    for number, point in enumerate(points, start=1):
        try:
            space.check_point(point)
        except SpaceError as err:
            raise ArgumentsError(
                f"--enqueue {path}, configuration {number} {json.dumps(point)}: {err}"
            ) from None
        checked.append(
            {name: float(value) if name in floats else value for name, value in point.items()}
        )
    return tuple(checked)


def load_points(path: Path, space: SearchSpace) -> tuple[dict[str, Value], ...]:
    """The checked points of an --enqueue file."""
    return check_points(read_points(path), space, path)


def enqueue_once(study: optuna.Study, points: Sequence[Mapping[str, Value]]) -> int:
    """Queues the points this study has not queued before; returns how many it queued."""
    storage, study_id = study._storage, study._study_id
    done = list(storage.get_study_system_attrs(study_id).get(ENQUEUED_ATTR, []))
    fresh = 0
    for point in points:
        digest = _digest(point)
        if digest in done:
            continue
        study.enqueue_trial(dict(point), user_attrs={"enqueued": True}, skip_if_exists=False)
        done.append(digest)
        fresh += 1
    if fresh:
        storage.set_study_system_attr(study_id, ENQUEUED_ATTR, done)
        logger.info("study %r: queued %d known configurations", study.study_name, fresh)
    return fresh


def _digest(point: Mapping[str, Value]) -> str:
    return hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:16]
