"""Experiment files: ``causalvar run experiment.yaml`` runs an analysis described in safe YAML.

The file is read with ``yaml.safe_load`` and validated against a pydantic schema before any model loads:
an unknown or misspelled key is refused with its path in the file and the nearest valid key, a value of
the wrong type with what was expected. The run folder (``out``) receives a copy of the file. Example::

    analysis: patch
    task: ioi
    variable: output_token
    corruption: [str, gn]
    component: [resid, heads]
    positions: [io, s2, last]
    n: 64
    out: runs/patch

Each analysis (localize, patch, dictionaries, validate) takes the options of the command of the same name
(``causalvar localize -h``, ...), spelled with underscores; lists may be YAML lists or comma-separated strings.
"""
from __future__ import annotations

import argparse
import difflib
import shutil
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Count = Annotated[int, Field(ge=1)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: str
    seed: int = 0

    def cli(self) -> argparse.Namespace:
        """The command-line namespace of the same analysis (lists joined by commas)."""
        joined = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in self.model_dump().items()}
        for k in ("layers", "positions", "head_position", "edit_k"):  # the command parses these from text
            if joined.get(k) is not None:
                joined[k] = str(joined[k])
        return argparse.Namespace(**joined)


class _Analysis(_Spec):
    task: str
    model: str = "smollm2-135m"
    batch_size: Count = 64


class _Sweep(_Analysis):
    layers: str | int | list[int] = "all"
    positions: list[str | int] | str | None = None

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, v):  # a YAML list of ints is the CLI's "0,5,29"
        return ",".join(str(x) for x in v) if isinstance(v, list) else v


class Localize(_Sweep):
    analysis: Literal["localize"]
    featurizer: list[str] | str = "full"
    variables: list[str] | str | None = None
    n_train: Annotated[int, Field(ge=0)] = 256
    n_test: Count = 128
    epochs: Count = 50
    lr: Annotated[float, Field(gt=0)] = 1e-2
    train_batch_size: Count = 32
    controls: Annotated[int, Field(ge=0)] = 0


class Patch(_Sweep):
    analysis: Literal["patch"]
    variable: str | None = None
    corruption: list[Literal["str", "gn"]] | str = "str"
    component: list[Literal["resid", "attn", "mlp", "heads"]] | str = "resid"
    metric: Literal["logit_diff", "prob", "kl", "iia"] = "logit_diff"
    direction: Literal["denoise", "noise"] = "denoise"
    method: Literal["exact", "attribution"] = "exact"
    head_position: str | int = "last"
    n: Count = 64
    window: Count = 1
    filter_correct: bool = False


class Dictionaries(_Analysis):
    analysis: Literal["dictionaries"]
    site: str
    attributes: list[str] | str | None = None
    dictionaries: list[str] | str = "supervised,neurons,pca,sae:1024,generic-sae:1024,das:32"
    sae_k: Count = 16
    generic_prompts: Count = 96
    n_fit: Count = 400
    n_test: Count = 96
    edit_k: list[int] | str = "2,4,6"


class Validate(_Spec):
    analysis: Literal["validate"]
    task: Literal["two_sat"] = "two_sat"
    order: Literal["ignored", "required"] = "ignored"
    delta: Annotated[int, Field(ge=0)] = 0
    n: Count = 10_000
    n_fit: Count = 4000
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95


ANALYSES = {"localize": Localize, "patch": Patch, "dictionaries": Dictionaries, "validate": Validate}
Experiment = Annotated[Union[Localize, Patch, Dictionaries, Validate], Field(discriminator="analysis")]


class ExperimentError(ValueError):
    """An experiment file that cannot be run, said with the key's path in the file."""


def load(path: str | Path) -> _Spec:
    """Read and validate an experiment file (no model is loaded)."""
    import yaml
    from pydantic import TypeAdapter

    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"no experiment file {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ExperimentError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: expected a mapping of keys (analysis: ..., task: ..., out: ...), got "
                              f"{type(raw).__name__}")
    if raw.get("analysis") not in ANALYSES:
        near = difflib.get_close_matches(str(raw.get("analysis")), ANALYSES, n=1)
        raise ExperimentError(f"{path}: analysis must be one of {sorted(ANALYSES)}, got {raw.get('analysis')!r}"
                              + (f" (did you mean '{near[0]}'?)" if near else ""))
    try:
        return TypeAdapter(Experiment).validate_python(raw)
    except ValidationError as e:
        raise ExperimentError(f"{path}: " + "; ".join(_explain(err, ANALYSES[raw["analysis"]]) for err in e.errors())) from e


def _explain(err: dict, schema: type[BaseModel]) -> str:
    """One pydantic error in the file's terms: the key's path, and for an unknown key the nearest valid one."""
    loc = [str(x) for x in err["loc"] if str(x) not in ANALYSES]  # the discriminator's tag is not a key
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        near = difflib.get_close_matches(loc[-1], schema.model_fields, n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else f"; the valid keys are {sorted(schema.model_fields)}"
        return f"unknown key '{key}'{hint}"
    if err["type"] == "missing":
        return f"missing key '{key}'"
    return f"key '{key}': {err['msg']} (got {err.get('input')!r})"


def prepare(path: str | Path) -> _Spec:
    """Validate the file (before any model loads) and copy it into its run folder; returns the analysis,
    whose ``cli()`` is the namespace its command runs on."""
    spec = load(path)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, out / Path(path).name)
    return spec
