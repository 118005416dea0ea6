"""Loaded models kept for the life of the process: a warm worker (oncoplan.deploy.listener.warm_worker)
runs many studies, and each app graph builds fresh operators, so the bundles would otherwise load per study.
A bundle whose configs or weights change on disk is loaded again."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_LOADED: dict[str, tuple[Hashable, object]] = {}  # kind -> (key, model): one per kind bounds memory


def bundle_stamp(bundle: Path) -> tuple:
    """Path, then (name, size, mtime) of every file under configs/ and models/."""
    bundle = Path(bundle).resolve()
    files = sorted(p for sub in ("configs", "models") for p in (bundle / sub).rglob("*") if p.is_file())
    return (str(bundle), tuple((str(p.relative_to(bundle)), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def cached(kind: str, bundles: Iterable[Path], options: Hashable, build: Callable[[], T]) -> T:
    """`build()` once per (bundles as on disk now, options); a new key for `kind` replaces the old."""
    key = (tuple(bundle_stamp(b) for b in bundles), options)
    hit = _LOADED.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]  # type: ignore[return-value]
    _LOADED.pop(kind, None)  # free the old model before loading the new one
    model = build()
    _LOADED[kind] = (key, model)
    return model
