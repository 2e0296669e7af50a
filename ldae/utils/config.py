"""Typed run configurations: what the library's recipes take, store and rebuild from.

Every recipe (pretraining, probes, fine-tuning, fitting a tokenizer, exporting) runs from a
dataclass deriving from :class:`Config`. The ``ldae`` command turns its flags into one (each flag's
destination is a field of the same name, and the field's default is the flag's default), and a
library user builds one directly::

    from ldae.engine.pretrain_config import PretrainConfig
    cfg = PretrainConfig(data="cifar10-jpeg.tar.gz", model="micro_patch4_32", fit_tokenizer=True)

A config is stored as a plain JSON-able dict (:meth:`Config.to_dict`: tuples become lists), which is
what checkpoints and result files hold under ``args``; :meth:`Config.from_dict` rebuilds it and
ignores keys it does not know, so records written by other versions still load.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, TypeVar

__all__ = ["Config", "to_jsonable"]

C = TypeVar("C", bound="Config")


@dataclasses.dataclass
class Config:
    """Base of the run configurations (a mutable dataclass: a run may resolve a field, e.g. a split).

    ``REQUIRED`` names the fields a run cannot do without. They default to None only so that the
    configs can share fields through mixins; building a config that leaves one None is refused.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        missing = [name for name in self.REQUIRED if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{type(self).__name__} needs {', '.join(missing)} (None given)")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (tuples as lists), in field order."""
        return {f.name: to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        """The config with ``values`` for the fields it names (unknown keys are ignored, missing ones default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def to_jsonable(x: Any) -> Any:
    """``x`` with tuples as lists, recursively through lists and dicts (what ``json`` round-trips)."""
    if isinstance(x, dict):
        return {k: to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    return x
