"""2-SAT, Palumbo et al.'s case study: is a formula of ten 2-clauses over five variables satisfiable?

A formula is ``N_CLAUSES`` = 10 distinct clauses over ``N_VARS`` = 5 variables; a clause joins two
literals of two different variables (``"x3"``, its negation ``"~x3"``), and ``x∨y`` and ``y∨x`` are the
same clause, so each formula holds 10 of the 40 distinct clauses (syntactic duplicates removed), each
written in a random literal order. The label comes from ``satisfiable``, an exact solver over the 32
assignments (each clause's truth table a 32-bit mask, the formula's the AND of its clauses'). The
sampler draws SAT and UNSAT formulas half and half.

The prompt is the paper's token layout: 4 tokens per clause then the readout, 41 tokens,
``"( x0 ~x3 ) ( x1 x2 ) ... :"``, answered by the token ``sat`` or ``unsat``. Token roles ``c0..c9``
are each clause's second literal (position ``4i + 2``, where the paper's parser is read), ``end0..end9``
its closing bracket (``4i + 3``, where this network's is), ``last`` the readout.

The network is a tiny Falcon decoder built from a config (``CONFIG``; no download): 2 layers,
d_model 128, d_mlp 512, ReLU, attention then MLP, 8 heads per layer with ALiBi position biases, and a
word-level tokenizer built offline (``write_network_files``). It differs from the paper's where the HF family
forces it or where it had to, to train on a CPU: a LayerNorm before each sublayer and before the
unembedding (the paper has none), ALiBi instead of learned positions (its steep heads attend locally
from the start, so each clause's two literals meet without a long plateau; a GPT-2 with learned
positions stayed at chance for 3,500 steps here), and 8 heads in both layers (the paper: 1 then 4).

``train`` made the weights shipped in ``causalvar/tasks/two_sat_weights/`` (``two_sat_model`` loads them;
``training.json`` records the recipe, the learning curve, the accuracy and the time), and ``train(seed=0)``
makes them again (one thread, deterministic under the seed). Where the paper trains on 10⁶ formulas in
batches of 10⁴ for 1000 epochs on a GPU, ``train`` fits a CPU thread: 10,000 steps of batches of 64 drawn
from 500,000 formulas (1.3 passes), AdamW (lr 3e-3, betas (0.9, 0.98), weight decay 0.1), the answer asked
at the readout and at every clause's closing bracket (of the clauses so far) and, what made it train, a
linear probe on the final residual at the same positions asked for the truth table of the formula so far
(which of the 32 assignments satisfy it: SAT iff one does), dropped after training. ``train(seed=0)``
reached **0.9972** on 5000 held-out formulas (0.9986 on 10,000 fresh ones) in 1511 s (25 min: 26 s of
data, then 0.15 s a step), on one torch thread of a 2-core CPU whose other core ran another engineer's
jobs throughout. Measured before it, on one thread too (seed 0; accuracy on 1000 held-out formulas): the
earlier recipe (the next-token loss in place of the probe, 7000 steps over 500,000 formulas) stayed at
chance for ~2500 steps and ended at 0.69; on 200,000 formulas, the answers alone (no probe, no next-token
loss) were still at chance (0.52) after 1600 steps, while with the probe at weight 8 the network left chance
within 250 steps, stood at 0.85 after 1500 and reached 0.935 after 2500 (the schedule decayed over
them); a probe weight of 1 trained slower (0.74 after 1685 steps), 32 no faster than 8, and lr 1e-2
slower than 3e-3.

``two_sat_interpretation`` is the paper's interpretation (parser, evaluating neurons, OR) for
``cv.validate``, its parser made to read this network's clauses in their context (its docstring).
"""
from __future__ import annotations

import json
import math
import random
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange, repeat

from ..causal_model import CausalModel
from ..sites import Site
from ..task import PromptTask
from ..validate import Interpretation, Step

N_VARS = 5
N_CLAUSES = 10
VARIABLES = tuple(f"x{i}" for i in range(N_VARS))
LITERALS = tuple(lit for v in VARIABLES for lit in (v, "~" + v))
#: every clause as written: an ordered pair of literals of two different variables (80)
CLAUSES = tuple((a, b) for a in LITERALS for b in LITERALS if a.lstrip("~") != b.lstrip("~"))
#: every clause up to literal order (40), each as its literals sorted
DISTINCT = tuple(sorted({tuple(sorted(c)) for c in CLAUSES}))
ANSWERS = {True: "sat", False: "unsat"}
SPECIALS = ("[PAD]", "[UNK]", "[EOS]")
VOCAB = SPECIALS + ("(", ")", ":") + LITERALS + tuple(ANSWERS.values())
SEQ_LEN = 4 * N_CLAUSES + 1
#: where the shipped weights and their training record live
WEIGHTS = Path(__file__).with_name("two_sat_weights")


# ------------------------------------------------------------------------------------------ solver
def _mask(literal: str) -> int:
    """The 32-bit set of assignments making ``literal`` true (assignment a: variable i is bit i of a)."""
    i = int(literal.lstrip("~x"))
    bits = sum(1 << a for a in range(2 ** N_VARS) if (a >> i) & 1)
    return (2 ** (2 ** N_VARS) - 1) ^ bits if literal.startswith("~") else bits


_MASKS = {lit: _mask(lit) for lit in LITERALS}


def truth_table(clauses: Sequence[tuple[str, str]]) -> int:
    """The assignments satisfying every clause, as a 32-bit mask (bit a: assignment a, where variable
    ``x_i`` is bit i of a)."""
    table = 2 ** (2 ** N_VARS) - 1
    for a, b in clauses:
        table &= _MASKS[a] | _MASKS[b]
    return table


def satisfiable(clauses: Sequence[tuple[str, str]]) -> bool:
    """Exactly: does some assignment of the variables satisfy every clause?"""
    return truth_table(clauses) != 0


# ------------------------------------------------------------------------------------ causal model
def _draw(rng: random.Random) -> list[tuple[str, str]]:
    """``N_CLAUSES`` distinct clauses, each in a random literal order."""
    return [c if rng.random() < 0.5 else c[::-1] for c in rng.sample(DISTINCT, N_CLAUSES)]


def sample_formula(rng: random.Random, sat: bool | None = None) -> list[tuple[str, str]]:
    """A formula drawn uniformly among those whose label is ``sat`` (a fair coin when None)."""
    sat = rng.random() < 0.5 if sat is None else sat
    while True:
        clauses = _draw(rng)
        if satisfiable(clauses) == sat:
            return clauses


def _sample(rng: random.Random) -> dict:
    return {f"c{i}": c for i, c in enumerate(sample_formula(rng))}


def _sat(c0, c1, c2, c3, c4, c5, c6, c7, c8, c9) -> bool:
    return satisfiable([c0, c1, c2, c3, c4, c5, c6, c7, c8, c9])


def causal_model() -> CausalModel:
    """Inputs ``c0..c9`` (clauses as literal pairs), output ``sat``; SAT and UNSAT drawn half and half."""
    return CausalModel(inputs={f"c{i}": CLAUSES for i in range(N_CLAUSES)}, mechanisms={"sat": _sat},
                       output="sat", sampler=_sample)


def clauses_of(setting) -> list[tuple[str, str]]:
    """The formula's clauses ``[c0, ..., c9]`` of an input setting."""
    return [tuple(setting[f"c{i}"]) for i in range(N_CLAUSES)]


def prompt(setting) -> str:
    """``"( x0 ~x3 ) ( x1 x2 ) ... :"``: 4 tokens per clause, then the readout."""
    return " ".join(f"( {a} {b} )" for a, b in clauses_of(setting)) + " :"


#: the network's config (a Falcon decoder with ALiBi attention, no position embeddings): 2 layers, d_model 128,
#: d_mlp 512, ReLU, 8 heads, attention then MLP (sequential), no dropout; written as ``config.json``
CONFIG = {"model_type": "falcon", "architectures": ["FalconForCausalLM"], "vocab_size": len(VOCAB),
          "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 8, "ffn_hidden_size": 512,
          "activation": "relu", "alibi": True, "new_decoder_architecture": False, "multi_query": False,
          "parallel_attn": False, "bias": True, "max_position_embeddings": SEQ_LEN, "hidden_dropout": 0.0,
          "attention_dropout": 0.0, "initializer_range": 0.02, "bos_token_id": VOCAB.index("[EOS]"),
          "eos_token_id": VOCAB.index("[EOS]"), "pad_token_id": VOCAB.index("[PAD]"), "tie_word_embeddings": False}


def write_network_files(folder: str | Path) -> None:
    """The network's config and its word-level tokenizer of ``VOCAB`` (built offline with ``tokenizers``;
    offsets supported; padding on the left) as files a ``save_pretrained`` folder holds, so that
    ``cv.load_model(folder)`` loads the network with ``model.safetensors`` beside them."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]",
         "eos_token": "[EOS]", "padding_side": "left", "model_max_length": SEQ_LEN}, indent=1) + "\n")
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=1) + "\n")


def two_sat(lm=None) -> PromptTask:
    """The 2-SAT task for the package's network (``two_sat_model()``, the default) or another adapter with
    this tokenizer: output ``sat`` answered ``sat`` / ``unsat`` at the readout, token roles ``c0..c9`` (each
    clause's second literal, position ``4i + 2``) and ``end0..end9`` (its closing bracket, ``4i + 3``)."""
    lm = lm if lm is not None else two_sat_model()
    positions = {**{f"c{i}": 4 * i + 2 for i in range(N_CLAUSES)}, **{f"end{i}": 4 * i + 3 for i in range(N_CLAUSES)}}
    return PromptTask(lm, causal_model(), prompt=prompt, answer=lambda v: ANSWERS[bool(v)], positions=positions,
                      name="two_sat")


# ------------------------------------------------------------------------------------------ network
def two_sat_model():
    """The shipped network (``causalvar/tasks/two_sat_weights/``: ``model.safetensors`` made by ``train``, with
    ``write_network_files``' config and tokenizer) as a ``cv.HFModel``; ``.info`` holds its training record
    (accuracy, steps, time). Falcon's blocks take no key/value cache the adapter can cut, so suffix runs
    recompute every position (the same numbers; ``fast_paths`` says so)."""
    from ..models import load_model
    from ..models.base import FastPathWarning

    if not (WEIGHTS / "model.safetensors").exists():
        raise FileNotFoundError(f"the 2-SAT weights are missing from the install ({WEIGHTS}); "
                                "causalvar.tasks.two_sat.train(out=WEIGHTS) makes them")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FastPathWarning)  # said once here, in the docstring, not per load
        lm = load_model(str(WEIGHTS))
    lm.info = json.loads((WEIGHTS / "training.json").read_text())
    return lm


def _fresh_network(seed: int):
    """The shipped architecture with every parameter drawn anew under ``seed`` (Falcon's initialisation:
    linear and embedding weights ``N(0, 0.02)``, biases 0, LayerNorms 1 and 0), in training mode."""
    net = two_sat_model().module
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "layernorm" in name or "ln_f" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * CONFIG["initializer_range"])
            p.requires_grad_(True)
    return net.train()


def _token_ids(settings: Sequence[dict]) -> torch.Tensor:
    """Prompt token ids ``[n, SEQ_LEN]`` without the tokenizer (every prompt is one length)."""
    index = {t: i for i, t in enumerate(VOCAB)}
    return torch.tensor([[index[t] for t in prompt(s).split()] for s in settings])


@torch.no_grad()
def _accuracy(net, ids: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """Share of ``ids: [n, SEQ_LEN]`` whose argmax token at the readout is the label's ``labels: [n]``."""
    right = 0
    for i in range(0, len(ids), batch):
        logits = net(input_ids=ids[i:i + batch]).logits[:, -1]
        right += int((logits.argmax(-1) == labels[i:i + batch]).sum())
    return right / len(ids)


#: where training reads answers: each clause's closing bracket (the formula so far), then the readout
TRAIN_READS = [4 * i + 3 for i in range(N_CLAUSES)] + [SEQ_LEN - 1]


def _prefix_tables(setting) -> list[int]:
    """The truth table (``truth_table``'s 32-bit mask) of each prefix formula (clauses ``0..i``) at
    ``TRAIN_READS``, the whole formula's last."""
    table, out = 2 ** (2 ** N_VARS) - 1, []
    for a, b in clauses_of(setting):
        table &= _MASKS[a] | _MASKS[b]
        out.append(table)
    return out + out[-1:]


def train(seed: int = 0, steps: int = 10_000, batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.1,
          betas: tuple[float, float] = (0.9, 0.98), table_weight: float = 8.0, n_train: int = 500_000,
          n_test: int = 5000, out: str | Path | None = None, log_every: int = 500) -> dict:
    """Train the network on ``n_train`` formulas drawn with ``seed`` (SAT/UNSAT balanced): cross-entropy on
    the answer token at the readout and, at every clause's closing bracket, on the answer for the
    clauses so far (the same question of a shorter formula: ten more labels for the same forward), plus,
    weighted by ``table_weight``, the binary cross-entropy of a linear probe on the final (normalised)
    residual at the same positions predicting the truth table of the formula so far (which of the 32
    assignments satisfy it; SAT iff one does). The probe is a training aid only: it is dropped, the network
    answers through its own unembedding. AdamW (``lr``, ``betas``, ``weight_decay``), linear warm-up over
    the first 5% of ``steps`` then cosine decay, seeded batches, one thread (deterministic under the seed).
    With ``out`` it writes ``model.safetensors`` and ``training.json`` there (the shipped ones:
    ``out=causalvar.tasks.two_sat.WEIGHTS``). Returns the training record: accuracy at the readout on
    ``n_test`` fresh formulas, steps, wall time."""
    from safetensors.torch import save_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        cm = causal_model()
        rng = random.Random(f"causalvar.two_sat.train:{seed}")
        data = [cm.draw(rng) for _ in range(n_train + n_test)]
        ids = _token_ids(data)  # [n, SEQ_LEN]
        tables = torch.tensor([_prefix_tables(s) for s in data])  # [n, len(TRAIN_READS)]: 32-bit masks
        bits = ((tables[..., None] >> torch.arange(2 ** N_VARS)) & 1).to(torch.uint8)  # [n, reads, 32]
        answers = torch.where(tables != 0, VOCAB.index(ANSWERS[True]), VOCAB.index(ANSWERS[False]))
        x, y, z = ids[:n_train], answers[:n_train], bits[:n_train]
        x_test, y_test = ids[n_train:], answers[n_train:, -1]
        t_data = time.perf_counter() - t0
        net = _fresh_network(seed)
        gen = torch.Generator().manual_seed(seed)
        probe = torch.nn.Linear(CONFIG["hidden_size"], 2 ** N_VARS)  # the truth-table probe, dropped after
        with torch.no_grad():
            probe.weight.copy_(torch.randn(probe.weight.shape, generator=gen) * CONFIG["initializer_range"])
            probe.bias.zero_()
        final = {}
        handle = net.transformer.ln_f.register_forward_hook(lambda m, args, h: final.__setitem__("h", h))
        opt = torch.optim.AdamW([*net.parameters(), *probe.parameters()], lr=lr, betas=betas,
                                weight_decay=weight_decay)
        warm = max(1, steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
        history = []
        net.train()
        for step in range(1, steps + 1):
            idx = torch.randint(n_train, (batch_size,), generator=gen)
            logits = net(input_ids=x[idx]).logits  # [b, SEQ_LEN, vocab]
            answer = torch.nn.functional.cross_entropy(rearrange(logits[:, TRAIN_READS], "b r v -> (b r) v"),
                                                       y[idx].flatten())
            table = torch.nn.functional.binary_cross_entropy_with_logits(probe(final["h"][:, TRAIN_READS]),
                                                                         z[idx].float())
            loss = answer + table_weight * table
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % log_every == 0 or step == steps:
                net.eval()
                history.append({"step": step, "answer_loss": round(float(answer.detach()), 4),
                                "table_loss": round(float(table.detach()), 4),
                                "test_accuracy": _accuracy(net, x_test[:1000], y_test[:1000]),
                                "seconds": round(time.perf_counter() - t0, 1)})
                net.train()
                print(history[-1], flush=True)
        handle.remove()
        net.eval()
        record = {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr, "betas": list(betas),
                  "weight_decay": weight_decay, "table_weight": table_weight, "n_train": n_train,
                  "n_test": n_test, "test_accuracy": _accuracy(net, x_test, y_test),
                  "train_accuracy_10k": _accuracy(net, x[:10_000], y[:10_000, -1]),
                  "data_seconds": round(t_data, 1), "train_seconds": round(time.perf_counter() - t0, 1),
                  "torch_threads": 1, "torch": torch.__version__, "history": history}
        if out is not None:
            out = Path(out)
            out.mkdir(parents=True, exist_ok=True)
            save_model(net, str(out / "model.safetensors"), metadata={"format": "pt"})
            (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        return record
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------- interpretation
#: the evaluating neurons: block 1's MLP hidden layer after its ReLU, at the readout
EVALUATOR = Site(1, "last", "mlp_hidden")
#: what the paper's parser equivalence counts as one clause: the literals in their written order, or not
ORDERS = ("ignored", "required")


def truth_tables(formulas: Sequence[Sequence[tuple[str, str]]]) -> np.ndarray:
    """Bool ``[n, 32]``: which of the 32 assignments satisfy each formula (column a: variable ``x_i`` is
    bit i of a)."""
    tables = np.array([truth_table(f) for f in formulas], dtype=np.uint64)
    return ((tables[:, None] >> np.arange(2 ** N_VARS, dtype=np.uint64)) & np.uint64(1)).astype(bool)


def fit_disjunction(tables: np.ndarray, active: np.ndarray) -> tuple[list[int], float]:
    """The set S of assignments for which ``OR_{a in S} tables[:, a]`` best matches ``active: [n]`` (bool),
    grown greedily from the empty set (``tables: [n, 32]``); returns S (sorted) and its accuracy."""
    chosen, current = [], np.zeros(len(active), dtype=bool)
    accuracy = float((current == active).mean())
    while True:
        scores = ((current[:, None] | tables) == active[:, None]).mean(0)  # [32]
        scores[chosen] = -1
        best = int(scores.argmax())
        if scores[best] <= accuracy:
            return sorted(chosen), accuracy
        chosen.append(best)
        current |= tables[:, best]
        accuracy = float(scores[best])


def _same_clauses(order: str):
    """Clause lists compared slot by slot: literal order ignored (``x∨y`` = ``y∨x``) or required."""
    if order == "required":
        return None  # the default: equal lists of equal (ordered) pairs

    def same(a, b) -> bool:
        return len(a) == len(b) and all(sorted(x) == sorted(y) for x, y in zip(a, b))
    return same


def two_sat_interpretation(lm=None, order: str = "ignored", n_fit: int = 4000, seed: int = 0,
                           min_effect: float = 0.1, threshold: float = 0.5, high: float = 2.0, delta: int = 0,
                           ridge: float = 1.0, batch_size: int = 256) -> Interpretation:
    """Palumbo et al.'s interpretation of the 2-SAT network, in three steps, fitted on ``n_fit`` formulas
    drawn apart from ``cv.validate``'s (``seed``):

    1. **parser** at block 0's output, at each clause's closing bracket (``[cv.Site(0, "end0"), ...,
       cv.Site(0, "end9")]``): α reads the residual ``[n, 10, d]`` and names the clauses left to right, at
       each position the nearest clause embedding by cosine to the residual less the shifts of the clauses
       it has already named before it; the abstract state is the list of the 10 clauses (``h``: the
       formula's clauses as written). Embeddings and shifts are one least-squares fit over the fitting
       formulas' residuals: the residual at clause i is modelled as the embedding of clause i plus, for each
       earlier clause j, a shift of that clause at distance ``i − j`` (one vector per written clause and
       distance; ``ridge``: that many observations of a zero vector added to each, so that a clause never
       seen at some distance has a shift of 0). The paper's parser is context-free (and its embeddings come
       from the weights); here block 0's attention at a bracket also takes in earlier clauses' literals, and
       a context-free nearest embedding misparses 11% of formulas (10,000 fresh ones, fitted on 4000), at
       late clauses, each time taking one literal of the true clause and the other from elsewhere, in 36% of
       cases from an earlier clause of the formula; embeddings per position, a whitened metric or a logistic
       regression per position do no better (89–91%), and even the 10 nearest fitting residuals miss 3.7% of
       last clauses: the bracket alone does not hold them. With the earlier clauses' shifts subtracted 99.7%
       of formulas parse. ``order="ignored"`` compares clauses as literal sets (``x∨y`` = ``y∨x``),
       ``"required"`` in their written order. γ writes the fitted residuals of its clauses, at each position
       its clause's embedding plus the shifts of the clauses before it (so α reads γ's clauses back; the
       network's other positions keep their own activations; the paper writes means there). The paper reads
       its parser at the second literal (``c0..c9``); this network, trained to answer at the closing
       brackets, joins a clause's literals there: at block 0 the context-free nearest embedding names 99% of
       clauses at the bracket and 52% at the second literal (4000 formulas).
    2. **evaluator** at block 1's MLP hidden layer after the ReLU at the readout (``EVALUATOR``, the
       adapter's ``mlp_hidden`` site): the neurons whose largest direct effect on the ``sat − unsat``
       logit difference over the fitting formulas exceeds ``min_effect`` are the evaluating ones; a
       neuron's direct effect on a formula is its activation times the gradient of the logit difference
       with respect to it (block 1 is the last, so that gradient runs only through the neuron's output
       column, the final LayerNorm linearised at the formula's residual, and the unembedding). Each is
       modelled as a disjunction of assignments (``fit_disjunction``): active iff the formula's truth
       table holds one of its assignments; the abstract state is the tuple of neurons active, compared
       within ``delta`` neurons. A neuron is active when its activation reaches ``threshold`` times its
       largest over the fitting formulas, and γ sets active neurons to ``high`` times that largest
       activation, inactive ones to 0, every other neuron to its mean over the fitting formulas: the
       paper's 0.5 and 2.0 in units of each neuron's scale (this network's neurons peak near 1 and are
       mostly far below 0.5, which would leave every neuron's disjunction empty).
    3. **output** at block 1's output at the readout: α is the network's answer from that residual (its
       final LayerNorm and unembedding, the adapter's ``unembed``: is ``sat`` the argmax token), ``h`` the
       OR of the neurons; γ writes the mean final residual of the fitting formulas the network answers
       ``sat`` (or ``unsat``).

    ``info`` holds what was fitted: the neurons, their effects, disjunctions and fit accuracies, and the
    parser's accuracy on the fitting formulas (whole formulas, and clause by clause).
    """
    from ..engine import Engine

    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} (how the parser's clauses are compared), got {order!r}")
    lm = lm if lm is not None else two_sat_model()
    task = two_sat(lm)
    rng = random.Random(f"causalvar.two_sat.interpretation:{seed}")
    settings = [task.causal_model.draw(rng) for _ in range(n_fit)]
    formulas = [clauses_of(s) for s in settings]
    parser_sites = [Site(0, f"end{i}") for i in range(N_CLAUSES)]
    evaluator, output = EVALUATOR, Site(1, "last")
    sat_id, unsat_id = VOCAB.index(ANSWERS[True]), VOCAB.index(ANSWERS[False])
    engine, batch = Engine(lm, batch_size), task.encode(settings)
    logits, acts = engine.capture(batch, parser_sites + [output])  # [n_fit, vocab], {site: [n_fit, d]}
    _, neurons, grads = engine.attribute(batch, [evaluator], lambda out, rows: out[:, sat_id] - out[:, unsat_id])

    # 1. the parser: clause embeddings and the shifts earlier clauses add, fitted by least squares
    resid = torch.stack([acts[s] for s in parser_sites], 1)  # [n_fit, 10, d]
    labels = torch.tensor([[CLAUSES.index(c) for c in f] for f in formulas])  # [n_fit, 10]
    missing = [CLAUSES[c] for c in range(len(CLAUSES)) if not (labels == c).any()]
    if missing:
        raise ValueError(f"clause {missing[0]} never occurs in the {n_fit} fitting formulas; raise n_fit")
    n_written = len(CLAUSES)
    design = torch.zeros(n_fit, N_CLAUSES, N_CLAUSES * n_written)  # one-hot (distance back k, clause there)
    for k in range(N_CLAUSES):
        design[:, k:].scatter_(-1, (k * n_written + labels[:, :N_CLAUSES - k]).unsqueeze(-1), 1.0)
    design, target = rearrange(design, "n k f -> (n k) f"), rearrange(resid, "n k d -> (n k) d")
    gram = (design.T @ design).double() + ridge * torch.eye(design.shape[1], dtype=torch.float64)
    fitted = torch.linalg.solve(gram, (design.T @ target).double()).float()
    fitted = rearrange(fitted, "(k c) d -> k c d", k=N_CLAUSES)  # [10, 80, d]
    embeddings, shifts = fitted[0], fitted[1:]  # [80, d]: a clause alone; [9, 80, d]: at distance 1..9 back
    unit = torch.nn.functional.normalize(embeddings, dim=-1)

    def parse(h: torch.Tensor) -> list:
        """``h: [n, 10, d]`` -> per row the 10 clauses, left to right: at each position the nearest clause
        embedding by cosine to the residual less the shifts of the clauses already named before it."""
        named = torch.zeros(h.shape[:2], dtype=torch.long)  # [n, 10]
        for i in range(N_CLAUSES):
            own = h[:, i] - sum(shifts[k - 1][named[:, i - k]] for k in range(1, i + 1))  # [n, d]
            named[:, i] = (torch.nn.functional.normalize(own, dim=-1) @ unit.T).argmax(-1)
        return [[CLAUSES[c] for c in row] for row in named.tolist()]

    def write_clauses(states: list, h: torch.Tensor) -> torch.Tensor:
        """The clauses ``states`` (n lists of 10) as the fitted residuals: at each position its clause's
        embedding plus the shifts of the clauses before it, ``[n, 10, d]``."""
        idx = torch.tensor([[CLAUSES.index(tuple(c)) for c in s] for s in states])  # [n, 10]
        out = embeddings[idx].clone()
        for k in range(1, N_CLAUSES):
            out[:, k:] += shifts[k - 1][idx[:, :N_CLAUSES - k]]
        return out

    parsed = parse(resid)
    parser_accuracy = {o: float(np.mean([(_same_clauses(o) or _equal_lists)(p, f) for p, f in zip(parsed, formulas)]))
                       for o in ORDERS}  # whole formulas right
    clause_accuracy = {o: float(np.mean([(_same_clauses(o) or _equal_lists)([a], [b]) for p, f in zip(parsed, formulas)
                                         for a, b in zip(p, f)])) for o in ORDERS}

    # 2. the evaluator: neurons by their direct effect on the sat − unsat logit difference
    hidden, final = neurons[evaluator], acts[output]  # [n_fit, d_mlp], [n_fit, d]
    effect = (hidden * grads[evaluator]).max(0).values  # [d_mlp]: each neuron's largest direct effect
    units = [int(u) for u in torch.argsort(effect, descending=True) if effect[u] > min_effect]
    if not units:
        raise ValueError(f"no MLP neuron's largest direct effect on the sat - unsat logit difference exceeds "
                         f"min_effect={min_effect} (the largest is {float(effect.max()):.3g}); lower min_effect")
    scale = hidden[:, units].max(0).values  # [k]: each evaluating neuron's largest activation
    tables = truth_tables(formulas)  # [n_fit, 32]
    active = (hidden[:, units] >= threshold * scale).numpy()  # [n_fit, k]
    fitted = [fit_disjunction(tables, active[:, j]) for j in range(len(units))]
    disjunctions = [s for s, _ in fitted]
    means = hidden.mean(0)  # [d_mlp]

    def evaluate(clauses) -> tuple:
        table = truth_tables([clauses])[0]
        return tuple(bool(table[s].any()) for s in disjunctions)

    def read_units(h: torch.Tensor) -> list:
        """``h: [n, d_mlp]`` -> per row which evaluating neurons are active."""
        return [tuple(row) for row in (h[:, units] >= threshold * scale.to(h)).tolist()]

    def write_units(states: list, h: torch.Tensor) -> torch.Tensor:
        """Active neurons at ``high`` times their scale, inactive at 0, the others at their means: ``[n, d_mlp]``."""
        out = repeat(means, "d -> n d", n=len(states)).clone()
        out[:, units] = high * scale * torch.tensor(states, dtype=out.dtype)
        return out

    # 3. the output: the network's answer from block 1's output, written as a class-mean residual
    says_sat = logits.argmax(-1) == sat_id  # [n_fit]
    if says_sat.all() or not says_sat.any():
        raise ValueError(f"the network answers {ANSWERS[bool(says_sat[0])]!r} to all {n_fit} fitting formulas; the "
                         "output step writes the mean residual of each answer and needs both")
    residuals = {True: final[says_sat].mean(0), False: final[~says_sat].mean(0)}

    def answer(h: torch.Tensor) -> list:
        with torch.no_grad():
            return (lm.unembed(h).argmax(-1) == sat_id).tolist()

    def write_answer(states: list, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([residuals[bool(s)] for s in states])

    info = {"order": order, "n_fit": n_fit, "seed": seed, "ridge": ridge, "parser_fit_accuracy": parser_accuracy,
            "parser_fit_clause_accuracy": clause_accuracy,
            "min_effect": min_effect, "threshold": threshold, "high": high, "delta": delta,
            "units": units, "unit_effects": [round(float(effect[u]), 4) for u in units],
            "unit_scales": [round(float(v), 4) for v in scale],
            "disjunctions": disjunctions, "disjunction_fit_accuracy": [round(a, 4) for _, a in fitted]}
    steps = [Step(parser_sites, h=list, alpha=parse, gamma=write_clauses, equal=_same_clauses(order)),
             Step(evaluator, h=evaluate, alpha=read_units, gamma=write_units, delta=delta),
             Step(output, h=any, alpha=answer, gamma=write_answer)]
    return Interpretation(clauses_of, steps, info)


def _equal_lists(a, b) -> bool:
    return [tuple(x) for x in a] == [tuple(y) for y in b]
