"""Bad inputs to the core objects (featurizers, causal models, prompt tasks) fail with a message in the
user's terms, before any work: which argument, variable, example or file, what it got, what was expected.
Saved featurizers come back in eval mode, ready to be scored again (issue #9, items 4 and 6)."""
from __future__ import annotations

import json
import re

import pytest
import torch

import causalvar as cv
from featurizers import DAS, DBM, PCA, SAE, BoundlessDAS, Featurizer, FeaturizerError, Neurons, Subspace

from conftest import make_lm, name_causal_model, name_prompt

D = 16


def _h(n: int = 8, d: int = D, seed: int = 0) -> torch.Tensor:
    """Random activations ``[n, d]``."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ hyperparameters
@pytest.mark.parametrize("dim", [0, 2.5, -3, "4", True])
def test_das_dim_must_be_a_positive_int(dim):
    with pytest.raises(FeaturizerError, match=rf"DAS: dim must be a positive int \(or None for the full "
                                              rf"rotation\), got {dim!r}"):
        DAS(dim=dim)


@pytest.mark.parametrize("make, words", [
    (lambda: PCA(n_components=0), r"PCA: n_components must be a positive int \(or None for all components\), got 0"),
    (lambda: PCA(n_components=1.5), r"PCA: n_components must be a positive int .* got 1.5"),
    (lambda: SAE(d_sae=-8), r"SAE: d_sae must be a positive int .* got -8"),
    (lambda: SAE(k=0), r"SAE: k must be a positive int .* got 0"),
    (lambda: Neurons(dims=[0, -1]), r"Neurons: dims must be a list of non-negative ints .* got \[0, -1\]"),
    (lambda: Neurons(dims=[0.5]), r"Neurons: dims must be a list of non-negative ints .* got \[0.5\]"),
    (lambda: Neurons(dims=3), r"Neurons: dims must be a list of non-negative ints .* got 3"),
    (lambda: Subspace(k=0), r"Subspace: k must be a positive int, got 0"),
    (lambda: BoundlessDAS(init_boundary=0), r"BoundlessDAS: init_boundary must be a number in \(0, 1\] .* got 0"),
    (lambda: BoundlessDAS(init_boundary=1.5), r"init_boundary must be a number in \(0, 1\] .* got 1.5"),
    (lambda: BoundlessDAS(temperature=(1.0,)), r"BoundlessDAS: temperature must be a \(start, end\) pair"),
    (lambda: DBM(Neurons(), l1=-1), r"DBM: l1 must be a number >= 0 .* got -1"),
    (lambda: DBM(Neurons), r"DBM wraps a featurizer instance, got the class Neurons; write DBM\(Neurons\(\)\)"),
    (lambda: DBM("pca"), r"DBM wraps a Featurizer instance .* got 'pca' of type str"),
])
def test_other_size_hyperparameters_are_checked_at_construction(make, words):
    with pytest.raises(FeaturizerError, match=words):
        make()


def test_valid_hyperparameters_are_stored_as_given():
    assert DAS(dim=None).dim is None and DAS(dim=3).dim == 3
    assert Neurons(dims=range(3)).dims == [0, 1, 2] and Neurons(dims=torch.tensor([4, 1])).dims == [4, 1]
    assert BoundlessDAS(init_boundary=1).init_boundary == 1.0


# ------------------------------------------------------------------------------ causal model
def test_intervention_outside_a_variables_values_is_refused():
    model = name_causal_model()
    setting = {"a": "Mary", "b": "John", "order": "ABB"}
    with pytest.raises(cv.CausalModelError, match=r"intervention on 's' = 99 is outside the values 's' takes .*"
                                                  r"'Anna', 'David', 'John'"):
        model.run(setting, intervene={"s": 99})
    with pytest.raises(cv.CausalModelError, match=r"intervention on input 'order' = 'AAB' is outside its domain "
                                                  r"\('ABB', 'BAB'\)"):
        model.run(setting, intervene={"order": "AAB"})
    assert model.run(setting, intervene={"s": "Tom"})["s"] == "Tom"  # a value it takes is accepted


def test_mechanism_values_skip_rejected_combinations_and_large_domains_are_not_checked():
    picky = cv.CausalModel(inputs={"a": range(3), "b": range(3)},
                           mechanisms={"ratio": lambda a, b: a // b})  # b = 0 raises: not a value
    assert picky.run({"a": 2, "b": 1}, intervene={"ratio": 0})["ratio"] == 0
    with pytest.raises(cv.CausalModelError, match=r"'ratio' = 5 is outside the values 'ratio' takes .*\(0, 1, 2\)"):
        picky.run({"a": 2, "b": 1}, intervene={"ratio": 5})
    big = cv.CausalModel(inputs={"a": range(1000), "b": range(1000)}, mechanisms={"same": lambda a, b: a == b})
    assert big.run({"a": 1, "b": 1}, intervene={"same": 7})["same"] == 7  # 10^6 combinations: not enumerated


def test_interchange_says_which_setting_misses_an_input():
    model = cv.tasks.hierarchical_equality().causal_model
    full = {"w": 0, "x": 0, "y": 1, "z": 2}
    with pytest.raises(cv.CausalModelError, match=r"the source setting for 'left' is missing input\(s\) \['w'\]"):
        model.interchange(full, {"left": {"x": 1, "y": 1, "z": 1}})
    with pytest.raises(cv.CausalModelError, match=r"the base setting is missing input\(s\) \['y', 'z'\]"):
        model.interchange({"w": 0, "x": 0}, {"left": full})
    assert model.interchange({"x": 0, "y": 1, "z": 2}, {"w": full})["w"] == 0  # an interchanged input may be absent


# ------------------------------------------------------------------------------ prompt tasks
@pytest.fixture(scope="module")
def gpt2(tokenizer):
    return cv.HFModel(make_lm("gpt2", len(tokenizer)), tokenizer)


def test_answer_the_tokenizer_does_not_know_is_refused(gpt2):
    task = cv.PromptTask(gpt2, name_causal_model(), prompt=name_prompt, answer=lambda v: " " + v.lower())
    with pytest.raises(cv.TaskError, match=r"answer ' mary' \(output value 'Mary'\) tokenizes to \['\[UNK\]'\]: "
                                           r"the tokenizer does not know it"):
        task.targets(["Mary"])


@pytest.mark.parametrize("returned, type_name", [(None, "NoneType"), (["When", "Mary"], "list")])
def test_prompt_function_returning_a_non_string_names_the_example(gpt2, returned, type_name):
    settings = [{"a": "Mary", "b": "John", "order": "ABB"}, {"a": "Tom", "b": "Anna", "order": "BAB"}]
    task = cv.PromptTask(gpt2, name_causal_model(),
                         prompt=lambda s: name_prompt(s) if s["a"] == "Mary" else returned)
    with pytest.raises(cv.TaskError, match=rf"the prompt function returned {type_name} .* for example 1 "
                                           r"\{'a': 'Tom', 'b': 'Anna', 'order': 'BAB'\}; "
                                           r"it must return the prompt text \(a str\)"):
        task.encode(settings)


# ------------------------------------------------------------------------------ featurizer files
@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    DAS(dim=4).build(D).save(tmp_path)
    return tmp_path


@pytest.mark.parametrize("corrupt", [lambda b: b[: len(b) // 2], lambda b: b"\x13\x37 not safetensors" * 3])
def test_corrupted_safetensors_names_the_file(saved, corrupt):
    file = saved / "featurizer.safetensors"
    file.write_bytes(corrupt(file.read_bytes()))
    with pytest.raises(FeaturizerError, match=rf"{re.escape(str(file))} is not a readable safetensors file"):
        Featurizer.load(saved)


def test_corrupted_or_foreign_json_names_the_file(saved):
    meta = saved / "featurizer.json"
    meta.write_text(meta.read_text()[:-10])
    with pytest.raises(FeaturizerError, match=rf"{re.escape(str(meta))} is not valid JSON"):
        Featurizer.load(saved)
    meta.write_text(json.dumps({"hello": 1}))
    with pytest.raises(FeaturizerError, match=r"lacks \['class', 'config', 'd', 'fitted'\]; it was not written"):
        Featurizer.load(saved)


# ------------------------------------------------------------------------------ wrong hidden size
@pytest.mark.parametrize("make", [lambda: DAS(dim=4), lambda: Neurons(dims=[1]), lambda: Neurons(),
                                  lambda: DBM(Neurons()), lambda: PCA(n_components=2)])
def test_interchange_and_encode_on_the_wrong_size_name_both_sizes(make, tmp_path):
    torch.manual_seed(0)
    feat = make().fit_activations(_h(40))
    feat.save(tmp_path)
    loaded = Featurizer.load(tmp_path)
    wrong = _h(d=D + 4)
    for f in (feat, loaded):
        words = re.escape(f"{f.name} was built for hidden size {D}, but got vectors of size {D + 4}")
        with pytest.raises(FeaturizerError, match=words):
            f.interchange(wrong, wrong)
        with pytest.raises(FeaturizerError, match=rf"hidden size {D}, but got vectors of size {D + 4}"):
            f.interchange(_h(), wrong)  # a source of another size than the base
        with pytest.raises(FeaturizerError, match=rf"hidden size {D}, but got vectors of size {D + 4}"):
            f.encode(wrong)


# ------------------------------------------------------------------------------ scored again after loading
def test_trained_das_loads_in_eval_mode_with_identical_interchanges(equality, tmp_path):
    task, mlp = equality
    data = cv.CounterfactualDataset.generate(task.causal_model, "left", 300, seed=0)
    torch.manual_seed(0)
    das = cv.fit(DAS(dim=4), mlp, task, "left", cv.Site(0), data, epochs=1, progress=False)
    torch.manual_seed(0)
    untrained = DAS(dim=4).build(das.d)
    assert not torch.equal(das.R, untrained.R)  # training moved the rotation
    das.save(tmp_path)
    loaded = Featurizer.load(tmp_path, d=das.d)
    assert loaded.training is False and all(not m.training for m in loaded.modules())
    assert loaded.fitted == das.fitted and loaded.config() == das.config()
    hb, hs = _h(32, das.d, seed=1), _h(32, das.d, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.interchange(hb, hs), das.interchange(hb, hs), atol=0, rtol=0)
