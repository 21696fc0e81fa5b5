"""The configuration reference page, generated from the code it documents.

``markdown()`` walks the ``RunConfig`` dataclass tree of ``config.py``: one table per section
(the class docstring above it), one row per key with its type (the allowed values of a
``typing.Literal``), its default and its doc text, the string literal right after the field
in the class body, read with ``ast`` because Python keeps no attribute docstrings at run time.
A table of the scorers ``model.name`` accepts comes from ``scorer_catalog.py``.

``python -m components.config_reference > docs/reference/configuration.md`` (``make docs``)
writes the page; tests/test_docs.py fails when the committed page and ``markdown()`` differ.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import typing
from typing import Any

from . import config, scorer_catalog

TITLE = "Configuration reference"


def _field_docs(tree: ast.Module) -> dict[str, tuple[str, dict[str, str]]]:
    """``{class name: (class docstring, {field: attribute docstring})}`` of every class in
    ``tree``; a field without a string literal right after it has no entry."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs: dict[str, str] = {}
        body = node.body
        for stmt, nxt in zip(body, body[1:], strict=False):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
        out[node.name] = (ast.get_docstring(node) or "", docs)
    return out


def _text(doc: str) -> str:
    """A docstring as one Markdown line: reST ``code`` becomes `code`; a word hyphenated
    across a line break (``warm-\n started``) is joined again."""
    doc = re.sub(r"(?<=\w)-\n\s*(?=\w)", "-", doc)
    return " ".join(doc.replace("``", "`").split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _type(hint: Any) -> str:
    """``str``, ``list[str]``; a ``Literal`` as its allowed values."""
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(f"`{v}`" for v in typing.get_args(hint))
    if isinstance(hint, type) and not typing.get_args(hint):
        return f"`{hint.__name__}`"
    return f"`{str(hint).replace('typing.', '')}`"


def _value(value: Any) -> str:
    """A default as it is written on the command line (``key=value``, YAML scalars)."""
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, int):
        return f"`{value:_}`" if abs(value) >= 10_000 else f"`{value}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""` (empty)'
    if isinstance(value, list):
        return "`" + ",".join(map(str, value)) + "`" if value else "`[]` (empty)"
    return f"`{value!r}`"


def _sections(cls: type, prefix: str) -> list[tuple[str, type, list[dataclasses.Field]]]:
    """``(dotted prefix, class, its non-section fields)`` for ``cls`` and, depth first in field
    order, every section below it."""
    hints = typing.get_type_hints(cls)
    leaves = [f for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(hints[f.name])]
    out = [(prefix, cls, leaves)]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _sections(hints[f.name], f"{prefix}{f.name}.")
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _modality_rows() -> list[str]:
    """The defaults that ``run video`` changes (``config.modality_defaults``)."""
    base = config.flatten(config.to_dict(config.RunConfig()))
    video = config.flatten(config.modality_defaults("video"))
    return [f"| `{key}` | {_cell(_value(value))} |" for key, value in video.items()
            if key != "modality" and base.get(key) != value]


def _scorer_rows() -> list[str]:
    rows = []
    for e in scorer_catalog.CATALOG:
        default = " (default)" if scorer_catalog.DEFAULT_SCORER.get(e.modality) == e.name else ""
        rows.append(f"| `{e.name}` | {e.modality}{default} | {'yes' if e.takes_prompt else ''} "
                    f"| {'yes' if e.torchvision_weights else ''} | {_cell(e.summary)} |")
    return rows


def markdown() -> str:
    """The page ``docs/reference/configuration.md``: deterministic, ends with a newline."""
    docs = _field_docs(ast.parse(inspect.getsource(config)))
    out = [
        f"# {TITLE}",
        "",
        "<!-- Generated from components/config.py and components/scorer_catalog.py by",
        "     `python -m components.config_reference` (`make docs`). Do not edit by hand. -->",
        "",
        "Every key of the run configuration (`components/config.py`), with its type, default",
        "and meaning. Set a key on the command line as `key=value` (for example",
        "`train.lr=3e-4 data.video.frames=8`; a list as comma-separated values), or in a YAML",
        "file passed with `--config` (nested mappings, `train: {lr: 3.0e-4}`). Precedence, lowest",
        "first: the defaults below, the defaults of the modality, the YAML file, the command's",
        "flags (`--epochs`, `--storage`, ...), then `key=value`. The whole config is validated",
        "before Ray or MLflow start, and every problem is reported at once. A number's type",
        "shows its allowed range (`[` `]` include the end, `(` `)` exclude it); NaN and",
        "infinities are refused everywhere.",
        "",
    ]
    for prefix, cls, fields in _sections(config.RunConfig, ""):
        class_doc, field_docs = docs.get(cls.__name__, ("", {}))
        hints = typing.get_type_hints(cls)
        out += [f"## `{prefix.rstrip('.')}`" if prefix else "## Top level", ""]
        if class_doc:
            out += [_text(class_doc), ""]
        if not fields:
            continue
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        numeric = config.numeric_keys()
        for f in fields:
            key = f"{prefix}{f.name}"
            allowed = ""
            if key in numeric:
                allowed = ", " + config.range_of(key).describe(numeric[key][1]).split(" in ", 1)[1]
            out.append(f"| `{key}` | {_cell(_type(hints[f.name]) + allowed)} "
                       f"| {_cell(_value(_default(f)))} "
                       f"| {_cell(_text(field_docs.get(f.name, '')))} |")
        out.append("")
    out += [
        "## Defaults of `run video`",
        "",
        "`visual-dpo run video` starts from these defaults instead (below the YAML file in",
        "precedence):",
        "",
        "| key | default |",
        "|---|---|",
        *_modality_rows(),
        "",
        "## Scorers",
        "",
        "The names `model.name` accepts, by modality. *Prompt*: the scorer reads the pair's",
        "prompt (`prompt` column, Pick-a-Pic `caption`). *`model.weights`*: it takes a",
        "torchvision state dict; `clip` takes `model.arch` and `model.pretrained` (an open_clip",
        "checkpoint) instead, `hf-clip` `model.pretrained` (a Hugging Face model directory); both",
        "take `model.score_scale` (docs/models.md, \"Published CLIP-family scorers\").",
        "",
        "| `model.name` | modality | prompt | `model.weights` | what it is |",
        "|---|---|---|---|---|",
        *_scorer_rows(),
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
