"""Bad inputs to localize: clear errors before any work, warnings where a score cannot tell anything,
and already trained featurizers scored as they are."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import causalvar as cv
from causalvar.splits import build_splits, evaluate
from featurizers import DAS, Featurizer, FeaturizerError, Neurons

KW = dict(n_train=0, n_test=40, progress=False)


def junk_task(task):
    """The equality task with a mechanism 'junk' that nothing reads."""
    cm = task.causal_model
    model = cv.CausalModel(inputs=cm.inputs, mechanisms={**cm.mechanisms, "junk": lambda w, y: w + y},
                           output="out", sampler=lambda rng: cm.draw(rng))
    return cv.Task(model, encode=task._encode, decode=task._decode)


def test_a_variable_the_output_ignores_warns(equality):
    task, mlp = equality
    with pytest.warns(cv.NoEffectWarning, match=r"no interchange of variable 'junk' changes the high-level output "
                                                 r"'out': in all \d+ pairs .* cannot tell whether or where 'junk'"):
        cv.localize(mlp, junk_task(task), "junk", Neurons(dims=range(8)), layers=[1], **KW)
    with warnings.catch_warnings():  # a variable the output reads does not warn
        warnings.simplefilter("error", cv.NoEffectWarning)
        cv.localize(mlp, task, "left", Neurons(), layers=[1], **KW)


def _nan_network(mlp):
    broken = copy.deepcopy(mlp)
    with torch.no_grad():
        broken[3].bias.fill_(float("nan"))
    return broken


def test_nan_outputs_are_the_network_s_not_a_score(equality):
    task, mlp = equality
    broken = _nan_network(mlp)
    with pytest.raises(cv.ModelError, match=r"the network outputs NaN or infinite logits on 58 of its 58 base "
                                            r"inputs without any intervention \(first: example 0 \{'w': .*\}\); "
                                            r"the network produced them, not causalvar"):
        cv.localize(broken, task, "left", Neurons(), layers=[1], **KW)  # the filter judges them
    with pytest.raises(cv.ModelError, match=r"under the interchange at L1 through full_vector the network outputs "
                                            r"NaN or infinite logits on 40 of 40 pairs .* the network itself outputs"):
        cv.localize(broken, task, "left", Neurons(), layers=[1], filter_correct=False, **KW)
    with pytest.raises(cv.ModelError, match="NaN or infinite logits on 40 of its 40 sampled inputs"):
        cv.task_accuracy(broken, task, n=40)


def test_nan_loss_blames_the_network_or_the_learning_rate_honestly(equality):
    task, mlp = equality
    kw = dict(layers=[1], n_train=200, n_test=50, progress=False)
    with pytest.raises(cv.TrainingError, match=r"the loss became nan at epoch 0, step 0 while training das\(k=4\) at "
                                               r"L1: the network itself outputs NaN .* not the training \(the "
                                               r"learning rate is not the cause\)") as e:
        cv.localize(_nan_network(mlp), task, "left", DAS(dim=4), filter_correct=False, **kw)
    assert "lower the learning rate" not in str(e.value)
    with pytest.raises(cv.TrainingError, match=r"while the network's own outputs on these pairs are finite: training "
                                               r"diverged; lower the learning rate \(lr=1e\+30\)"):
        cv.localize(mlp, task, "left", DAS(dim=4), lr=1e30, **kw)


@pytest.mark.parametrize("bad, message", [
    (dict(seed=None), r"seed must be an int >= 0 \(the same seed gives the same table\), got None"),
    (dict(n_test=0), r"n_test must be an int >= 1 \(evaluation pairs per set\), got 0"),
    (dict(n_train=-5), r"n_train must be an int >= 0 .*got -5"),
    (dict(lr=-1), r"lr must be a positive number \(AdamW's learning rate, e.g. 1e-2\), got -1"),
    (dict(epochs=0), r"epochs must be an int >= 1 .*got 0"),
    (dict(val_fraction=1.0), r"val_fraction must be a number in \[0, 1\) .*got 1.0"),
    (dict(train_batch_size=0), r"train_batch_size must be an int >= 1 .*got 0"),
    (dict(featurizer=DAS), r"featurizer DAS is a class; pass an instance, e.g. DAS\(\) .*DAS\(dim=8\)"),
    (dict(featurizer=[Neurons(), Neurons]), r"featurizer Neurons is a class; pass an instance"),
    (dict(featurizer="das"), r"featurizer must be a Featurizer instance \(e.g. Neurons\(\), DAS\(dim=8\)\), got 'das'"),
    (dict(layers=None), r"layers must be a block index, a module path, or a non-empty list of them"),
])
def test_bad_settings_fail_before_any_work(equality, tmp_path, bad, message):
    task, mlp = equality
    kw = dict(featurizer=DAS(dim=4), layers=[0], n_train=100, n_test=40, progress=False, out=tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        cv.localize(mlp, task, "left", **{**kw, **bad})
    assert not (tmp_path / "run").exists()  # refused before the run folder, the data or any forward


def test_one_layer_as_an_int_or_a_module_path(equality):
    task, mlp = equality
    one = cv.localize(mlp, task, "left", Neurons(), layers=1, **KW).table
    listed = cv.localize(mlp, task, "left", Neurons(), layers=[1], **KW).table
    assert one.equals(listed)
    named = cv.localize(mlp, task, "left", Neurons(), layers="1", **KW).table
    assert named["layer"].tolist() == ["1"] and named["iia"].tolist() == listed["iia"].tolist()


def test_a_site_that_does_not_fit_is_found_before_any_cell_runs(equality, tmp_path):
    task, mlp = equality
    with pytest.raises(FeaturizerError, match=r"das\(k=32\) does not fit layer 3, whose activations have size 2: "
                                              r".*subspace size must be in \[1, 2\]"):
        cv.localize(mlp, task, "left", DAS(dim=32), layers=[0, 1, 3], n_train=100, n_test=40, out=tmp_path,
                    progress=False)
    assert not (tmp_path / "cells.jsonl").exists()  # layers 0 and 1 were not trained first


def test_a_featurizer_loaded_for_another_size_is_refused_not_retrained(equality, tmp_path):
    task, mlp = equality
    data = cv.CounterfactualDataset.generate(task.causal_model, "left", 300, seed=0)
    torch.manual_seed(0)
    cv.fit(DAS(dim=4), mlp, task, "left", cv.Site(1), data, epochs=1, progress=False).save(tmp_path / "das")
    das = Featurizer.load(tmp_path / "das")
    small = cv.tasks.train_mlp(task, hidden=(16,), steps=200, n=2000)
    with pytest.raises(FeaturizerError, match=r"das\(k=4\) was fitted on hidden size 64, but layer 0 has size 16"):
        cv.localize(small, task, "left", das, layers=[0], **KW)
    with pytest.raises(ValueError, match=r"das\(k=4\) is already trained \(on hidden size 64\) and n_train=100 would "
                                         r"train it again; pass n_train=0 to score it as is, or featurizer.clone\(\)"):
        cv.localize(small, task, "left", das, layers=[0], n_train=100, n_test=40, progress=False)


def test_a_trained_featurizer_is_scored_as_is(equality, tmp_path):
    task, mlp = equality
    site = cv.Site(1)
    train = cv.CounterfactualDataset.generate(task.causal_model, "left", 600, seed=1)
    torch.manual_seed(0)
    das = cv.fit(DAS(dim=8), mlp, task, "left", site, train, epochs=2, progress=False)
    before = das.R.detach().clone()
    test = cv.CounterfactualDataset.generate(task.causal_model, "left", 300, seed=2)
    res = cv.localize(mlp, task, "left", das, layers=[1], n_train=0, n_test=200, data=test, progress=False)
    (_, _, split), _ = build_splits(cv.Engine(cv.TorchModel(mlp)), task, test, [site], [0, 0, 200])
    expected, _ = evaluate(cv.Engine(cv.TorchModel(mlp)), split, site, das)
    torch.manual_seed(0)
    fresh, _ = evaluate(cv.Engine(cv.TorchModel(mlp)), split, site, DAS(dim=8).build(64))
    assert res.table["iia"].item() == expected > fresh + 0.1  # the trained rotation, not a fresh one
    assert torch.equal(das.R.detach(), before) and "epochs_run" not in res.table
    das.save(tmp_path / "das")
    again = cv.localize(mlp, task, "left", Featurizer.load(tmp_path / "das"), layers=[1], n_train=0, n_test=200,
                        data=test, progress=False)
    assert again.table["iia"].item() == expected


def test_a_tensor_network_in_float64_or_bfloat16(equality):
    task, mlp = equality
    ref = cv.localize(mlp, task, "left", Neurons(dims=range(16)), layers=[0, 1, 2], **KW).table
    double = cv.localize(copy.deepcopy(mlp).double(), task, "left", Neurons(dims=range(16)), layers=[0, 1, 2],
                         **KW).table
    assert double["iia"].tolist() == ref["iia"].tolist()
    half = cv.localize(copy.deepcopy(mlp).to(torch.bfloat16), task, "left", Neurons(dims=range(16)),
                       layers=[0, 1, 2], **KW).table
    assert half["iia"].tolist() == pytest.approx(ref["iia"].tolist(), abs=0.1)
    trained = cv.localize(copy.deepcopy(mlp).double(), task, "left", DAS(dim=4), layers=[1], n_train=200,
                          n_test=40, epochs=1, progress=False).table
    assert 0 <= trained["iia"].item() <= 1


def test_encode_of_the_wrong_size_names_the_shape(equality):
    task, mlp = equality
    short = cv.Task(task.causal_model, encode=lambda s: task._encode(s)[:7], decode=task._decode)
    with pytest.raises(cv.ModelError, match=r"the network rejected the input the task's encode produced "
                                            r"\(x: \[\d+, 7\], rows x features\).*Check that the task's encode") as e:
        cv.localize(mlp, short, "left", Neurons(), layers=[1], **KW)
    assert "mat1 and mat2" in str(e.value.__cause__)


def test_decoded_values_outside_the_output_s_values(equality):
    task, mlp = equality
    words = cv.Task(task.causal_model, encode=task._encode,
                    decode=lambda logits: ["yes" if c else "no" for c in logits.argmax(-1).tolist()])
    with pytest.raises(ValueError, match=r"the network answers none of the \d+ bases correctly.*decoded outputs "
                                         r"\(task.predict of the logits\) took the values \['no', 'yes'\] \(str\), "
                                         r"while the causal model's output 'out' takes \[False, True\] \(bool\)"):
        cv.localize(mlp, words, "left", Neurons(), layers=[1], **KW)


def test_a_class_index_beyond_the_network_s_logits(equality):
    task, mlp = equality
    five = cv.Task(task.causal_model, encode=task._encode, target=lambda v: 5 if v else 0)
    with pytest.raises(cv.TaskError, match=r"output value True of 'out' maps to class 5 \(the task's target\), but "
                                           r"the network gives 2 logits \(classes 0..1\)"):
        cv.localize(mlp, five, "left", DAS(dim=4), layers=[1], n_train=100, n_test=40, progress=False)
