"""Property-based fuzzing (Hypothesis) of specs and CLI arguments: bad input is always a clear
error that names what is wrong (SpecError in Python, exit 2 on the command line), never a
traceback, and a command that fails leaves nothing behind in the working directory.

Deterministic (``derandomize``) and bounded, so it runs in seconds and fails the same way twice.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from autoopt.cli import app
from autoopt.spec import SpecError, StudySpec

FUZZ = settings(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))

BASE: dict[str, Any] = {
    "name": "fuzz", "task": "tabular", "task_options": {"size": 0.25, "epochs": 2}, "n_trials": 3, "workers": 1,
    "pruner": "median", "sampler": "tpe",
    "space": {"optimizers": ["adam", "sgd"], "schedulers": ["constant"], "params": {"adam": {"lr": {"low": 1e-4, "high": 1e-2}}}},
    "warm_start": {"enabled": False},
}

#: Where a fuzzed value may land: top-level fields and nested ones (dotted), plus made-up keys.
FIELDS = [
    "name", "task", "task_options", "space", "n_trials", "timeout_s", "workers", "cpus_per_trial", "gpus_per_trial",
    "sampler", "sampler_options", "pruner", "pruner_options", "seed", "eval_every_steps", "retries", "storage",
    "tracking", "tracking_uri", "experiment", "ray_address", "warm_start", "description",
    "space.optimizers", "space.families", "space.exclude", "space.params", "space.params.adam",
    "space.params.adam.lr", "space.params.adam.beta1", "space.params.*.weight_decay", "space.schedulers",
    "space.scheduler_params", "space.warmup", "space.grad_clip", "space.batch_size",
    "warm_start.enabled", "warm_start.n_trials", "warm_start.narrow_to", "bogus_key", "space.bogus",
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["adam", "cv", "os:system", "../x", "", "-1", "1e400", "nan", "*", "tpe"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["low", "high", "log", "lr", "adam", "x", "*"]), inner,
                                            max_size=3)),
    max_leaves=6,
)
mutations = st.lists(st.tuples(st.sampled_from(FIELDS), values, st.booleans()), min_size=1, max_size=3)


def mutate(base: dict[str, Any], changes: list[tuple[str, Any, bool]]) -> dict[str, Any]:
    """``base`` with each (path, value, delete) applied: set or delete that (dotted) field."""
    data = json.loads(json.dumps(base))
    for path, value, delete in changes:
        node = data
        *parents, leaf = path.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        if delete:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return data


def error_fields(message: str) -> set[str]:
    """The field paths a SpecError names, one per line: ``source: field.path: message``."""
    fields = set()
    for line in message.splitlines():
        parts = line.split(": ", 2)
        assert len(parts) == 3, f"not 'source: field: message': {line!r}"
        fields.add(parts[1])
    return fields


@settings(FUZZ, max_examples=400)
@given(mutations)
def test_spec_from_dict_accepts_or_names_the_field(changes):
    data = mutate(BASE, changes)
    try:
        spec = StudySpec.from_dict(data)
    except SpecError as exc:
        named = error_fields(str(exc))
        touched = {path.split(".")[0] for path, _, _ in changes}
        assert any(f.split(".")[0] in touched or f == "(top level)" for f in named), (str(exc), changes)
    else:
        json.dumps(spec.to_dict())  # whatever validates can be stored


@settings(FUZZ, max_examples=150)
@given(st.one_of(st.text(max_size=200), mutations.map(lambda c: yaml.safe_dump(mutate(BASE, c)))))
def test_spec_files_load_or_fail_with_a_spec_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            StudySpec.from_yaml(path)
        except SpecError as exc:
            assert str(exc).startswith(str(path)) or "spec file" in str(exc), str(exc)


@contextmanager
def in_empty_dir() -> Iterator[Path]:
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(cwd)


def invoke(args: list[str]) -> Any:
    env = {"AUTOOPT_STORAGE": None, "AUTOOPT_TRACKING_URI": None, "MLFLOW_TRACKING_URI": None, "COLUMNS": "400"}
    return CliRunner().invoke(app, args, env=env)


def assert_usage_error(result: Any, *names: str) -> None:
    """Exit 2, no traceback, and one of ``names`` in what the user reads."""
    assert result.exit_code == 2, (result.exit_code, result.output[-2000:], result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert any(n in result.output for n in names), (names, result.output[-2000:])


#: Spec changes that always make a spec invalid, with what the error must name.
BREAKERS = [
    ("workers", 0, "workers"), ("n_trials", -3, "n_trials"), ("sampler", "annealing", "sampler"),
    ("pruner", "sometimes", "pruner"), ("task", "vision", "task"), ("name", "../x", "name"),
    ("space.optimizers", ["adamz"], "space.optimizers"), ("space.params.adam.lr", {"low": 1, "high": 0}, "space.params"),
    ("space.warmup", 2.0, "space.warmup"), ("gpus_per_trial", -1, "gpus_per_trial"), ("surprise", 1, "surprise"),
]
flag_values = st.one_of(st.none(), st.integers(-5, 5).map(str), st.sampled_from(["", "abc", "1.5", "nan", "-0"]))


@settings(FUZZ, max_examples=40)
@given(mutations, st.sampled_from(BREAKERS), flag_values, flag_values, st.booleans())
def test_cli_run_with_a_bad_spec_exits_2_names_it_and_creates_nothing(changes, breaker, trials, workers, as_json):
    path, value, field = breaker
    data = mutate(mutate(BASE, changes), [(path, value, False)])
    with in_empty_dir() as work:
        (work / "spec.yaml").write_text(yaml.safe_dump(data))
        args = ["run", "spec.yaml"] + (["--trials", trials] if trials is not None else []) \
            + (["--workers", workers] if workers is not None else []) + (["--json"] if as_json else [])
        result = invoke(args)
        # a bad flag value is reported first (by the option's name), else the spec's field
        assert_usage_error(result, field, "--trials", "--workers")
        assert sorted(p.name for p in work.iterdir()) == ["spec.yaml"]


storage_urls = st.one_of(
    st.builds(lambda s, p: f"{s}{{tmp}}/{p}", st.sampled_from(["sqlite:///", "journal://"]),
              st.text(st.characters(codec="ascii", exclude_characters="\x00/?#"), min_size=1, max_size=12)),
    st.sampled_from(["bogus://x", "postgresql://fuzz:hunter2@127.0.0.1:1/db", "mysql://u:hunter2@127.0.0.1:1/db",
                     "sqlite:////proc/x/x.db", "journal:///proc/x/x.log", "not a url", "sqlite://", "://"]),
)


@settings(FUZZ, max_examples=40)
@given(st.sampled_from(["status", "best", "resume", "report"]),
       st.text(min_size=1, max_size=20).filter(lambda s: not s.startswith("-")), storage_urls)
def test_cli_reading_a_missing_study_exits_2_and_creates_nothing(command, name, storage):
    with in_empty_dir() as work:
        result = invoke([command, name, "--storage", storage.replace("{tmp}", str(work))])
        assert_usage_error(result, "no study named", "no storage at", "storage")
        assert "hunter2" not in result.output
        assert list(work.iterdir()) == []


#: names a console would read as rich markup: a style tag ("[bold]"), a closing tag ("[/x]")
markup_like = st.builds(lambda a, tag, b: f"{a}[{tag}]{b}", st.text(max_size=4),
                        st.sampled_from(["/x", "/", "bold", "/red", "red on blue", "link=http://x", "@click"]),
                        st.text(max_size=4))


@settings(FUZZ, max_examples=30)
@given(st.sampled_from(["status", "best", "resume", "report"]),
       st.one_of(markup_like, st.text(min_size=1, max_size=20)).filter(lambda s: s.strip() and not s.startswith("-")))
def test_cli_names_a_missing_study_as_typed(command, name):
    """In an existing storage, a study that is not there is an error that repeats its name as the
    user typed it: never read as markup (a "[/x]" raised MarkupError, a "[bold]" vanished)."""
    import optuna

    with in_empty_dir() as work:
        url = f"sqlite:///{work}/studies.db"
        optuna.create_study(study_name="there", storage=url)
        result = invoke([command, name, "--storage", url])
        assert_usage_error(result, "no study named")
        assert f"error: no study named {name!r}" in result.output.replace("\n", ""), result.output
