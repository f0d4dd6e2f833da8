"""Bad specs fail with a message naming the field and what is allowed."""

from __future__ import annotations

import pytest

from autoopt.spec import SpaceSpec, SpecError, StudySpec


def spec(**kw):
    return StudySpec.from_dict({"name": "s", "task": "cv", **kw})


@pytest.mark.parametrize(
    "space, needle",
    [
        ({"optimizers": ["adamw", "adamz"]}, "unknown optimizer 'adamz'; allowed: sgd"),
        ({"params": {"adamw": {"lr": {"low": 1e-2, "high": 1e-4}}}}, "low 0.01 is above high 0.0001"),
        ({"params": {"adamw": {"weight_decay": -0.1}}}, "params.adamw.weight_decay: -0.1 is out of range; weight_decay must be >= 0"),
        ({"params": {"adam": {"beta1": 1.0}}}, "beta1 must be in [0, 1)"),
        ({"params": {"adam": {"beta2": {"low": 0.9, "high": 1.2}}}}, "beta2 must be in [0, 1)"),
        ({"params": {"adam": {"momentum": 0.9}}}, "unknown hyperparameter 'momentum'"),
        ({"params": {"sgd": {"lr": 0}}}, "lr must be > 0"),
        ({"schedulers": ["cosine", "warp"]}, "unknown scheduler 'warp'; allowed: constant"),
        ({"warmup": 1.5}, "warmup is a fraction of total steps in [0, 1)"),
        ({"families": ["quantum"]}, "unknown family 'quantum'"),
        ({"optimizers": []}, "space.optimizers: optimizers must name at least one optimizer"),
    ],
)
def test_bad_space_names_field_and_allowed_values(space, needle):
    with pytest.raises(SpecError) as e:
        spec(space=space)
    assert needle in str(e.value)
    assert "space" in str(e.value)


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"task": "vision"}, "unknown task 'vision'; use one of cv, tabular, nlp, recsys"),
        ({"sampler": "annealing"}, "unknown sampler 'annealing'; allowed: tpe"),
        ({"pruner": "guillotine"}, "unknown pruner 'guillotine'; allowed: hyperband"),
        ({"n_trials": 0}, "n_trials"),
        ({"n_trials": None, "timeout_s": None}, "set a budget"),
        ({"name": "bad name!"}, "name must be"),
        ({"workerz": 3}, "workerz"),
        ({"pruner_options": {"min_resourc": 2}}, "pruner_options: SuccessiveHalvingPruner.__init__() got an "
                                                  "unexpected keyword argument 'min_resourc'"),
        ({"pruner": "median", "pruner_options": {"n_startup": 2}}, "unexpected keyword argument 'n_startup'"),
        ({"pruner": "patient", "pruner_options": {"wrapped": "median", "wrapped_options": {"warmup": 1}}},
         "unexpected keyword argument 'warmup'"),
        ({"sampler_options": {"n_startup": 3}}, "sampler_options: unknown option(s) n_startup; allowed: "),
        ({"sampler": "random", "sampler_options": {"seed": 3}}, "seed is the spec's own `seed` field"),
    ],
)
def test_bad_study_fields(kw, needle):
    with pytest.raises(SpecError) as e:
        spec(**kw)
    assert needle in str(e.value)


def test_good_pruner_and_sampler_options_pass():
    spec(pruner="hyperband", pruner_options={"reduction_factor": 4}, sampler="tpe",
         sampler_options={"n_startup_trials": 5, "multivariate": False})
    spec(pruner="patient", pruner_options={"patience": 2, "wrapped": "median", "wrapped_options": {"n_startup_trials": 2}})
    spec(pruner="learning_curve", pruner_options={"quantile": 0.5, "similar_tasks": True})


def test_yaml_errors(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        StudySpec.from_yaml(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        StudySpec.from_yaml(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="YAML mapping"):
        StudySpec.from_yaml(p)


def test_shipped_specs_are_valid():
    from pathlib import Path

    files = sorted(Path(__file__).resolve().parents[1].joinpath("studies").glob("*.yaml"))
    assert {f.stem for f in files} >= {"quickstart", "cv", "tabular", "nlp", "recsys"}
    for f in files:
        s = StudySpec.from_yaml(f)
        assert s.name == f.stem


def test_good_space_round_trips():
    s = spec(space={"optimizers": ["adamw", "sgd"], "params": {"adamw": {"lr": {"low": 1e-4, "high": 1e-2}, "beta2": 0.999}},
                    "schedulers": ["cosine"], "warmup": 0.05})
    again = StudySpec.from_dict(s.to_dict())
    assert again.space == s.space
    assert isinstance(SpaceSpec().warmup.low, float)


def test_the_python_api_takes_a_spec_file_as_the_cli_does(tmp_path):
    from pathlib import Path

    import autoopt
    from autoopt.study import _as_spec

    shipped = Path(__file__).resolve().parent.parent / "studies" / "quickstart.yaml"
    for given in (str(shipped), shipped):
        spec = _as_spec(given, {"n_trials": 3, "workers": 1})
        assert spec.name == "quickstart" and spec.n_trials == 3 and spec.workers == 1
        assert spec.space == StudySpec.from_yaml(shipped).space
    with pytest.raises(SpecError, match="spec file not found"):  # before anything starts
        autoopt.run(str(tmp_path / "nope.yaml"))
    with pytest.raises(TypeError, match="spec: a StudySpec, a dict or the path of a YAML spec file, not int"):
        autoopt.run(42)
    with pytest.raises(SpecError, match="spec: name: Field required"):  # keywords only: named as in a file
        autoopt.run(objective="pkg.module:objective", n_trials=2)
