"""Prompt material for the built-in IOI (indirect object identification) task.

Measured on the embedded SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantized to
float32, CPU) on 2026-11-22:

* n = 1000 random prompts, ``random.Random(0)``; per prompt, drawn in this
  order: template index (``randrange``), (IO, S) = ``rng.sample(NAMES, 2)``,
  order (``rng.choice(["ABB", "BAB"])``), PLACE, OBJECT.
* Prompts were tokenized without special tokens (the tokenizer adds no BOS),
  right-padded in batches of 64, and the logits were read at each prompt's
  last real token (always " to").
* Accuracy (argmax next token == first token of " " + IO): 0.991 overall;
  ABB 0.982 (n=502), BAB 1.000 (n=498).
* Mean logit difference logit(" " + IO) - logit(" " + S): 5.49 overall
  (ABB 4.87, BAB 6.12); logit diff > 0 on 99.7% of prompts.
* Accuracy per template (index into TEMPLATES, n ~ 87-106 each):
  0: 0.990, 1: 1.000, 2: 0.990, 3: 0.990, 4: 1.000, 5: 0.960, 6: 0.991,
  7: 0.990, 8: 1.000, 9: 1.000.

How the lists were chosen: starting from 196 single-token names, 27 places,
30 objects and 18 Wang et al. (2022)-style templates, the model scored 0.892
(n=6000, seed 1; ABB 0.840, BAB 0.944). Templates with low ABB accuracy were
dropped (e.g. "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave
it to" scored 0.14 on ABB), as were templates without PLACE/OBJECT, and the
weakest places, objects and names (by accuracy as IO and as S over two sweeps
with seeds 1 and 2). The names were chosen on those sweeps, not on the seed-0
prompts above, but the figures above are still for the pruned lists and so
somewhat optimistic for unseen names. The remaining errors are almost all ABB
prompts where the model prefers another token (e.g. " his"/" the") over both
names.
"""

# First names; each is a single token when preceded by a space
# (``len(tok(" " + name, add_special_tokens=False).input_ids) == 1``).
# NOTE: most of them are *not* single tokens without the leading space, so
# every template puts a space before every name (no name at sentence start).
NAMES = [
    "Sara", "Helen", "Lisa", "Nathan", "Ella", "David", "Sarah", "Dennis",
    "Amanda", "Carl", "Frank", "Ryan", "Jean", "Lawrence", "Beth", "Ian",
    "Oliver", "Barbara", "Jennifer", "Diane", "Sandra", "Kate", "Sharon",
    "Susan", "Jessica", "Larry", "George", "Elizabeth", "Ethan", "Terry",
    "Emma", "Simon", "Jeremy", "Dorothy", "Russell", "Lucas", "Lauren",
    "Louis", "Christina", "Samuel", "Billy", "Kevin", "Amy", "Sean", "Bobby",
    "Brian", "Nicole", "Julia", "Mary", "John",
]

# Single-token (with leading space) places, used as "the {PLACE}".
PLACES = [
    "restaurant", "bank", "gym", "shop", "store", "bakery", "mall", "house",
    "office", "kitchen", "garden", "market", "beach", "hotel", "hospital",
    "church",
]

# Single-token (with leading space) objects, used as "a {OBJECT}"
# (all start with a consonant sound).
OBJECTS = [
    "book", "phone", "ball", "toy", "basketball", "doll", "computer", "shirt",
    "necklace", "hat", "kiss", "card", "bag", "sandwich", "box", "drink",
]

# Fields: {A}, {B} = the two names in first-mention order; {S} = the repeated
# subject (A or B); {PLACE}; {OBJECT}. The indirect object IO is the name that
# is not S, and the answer is " " + IO. Order "ABB": A = IO, B = S = S2;
# order "BAB": A = S, B = IO. Each template contains every field exactly once,
# S2 is the last name mentioned, and the prompt ends right before the answer.
TEMPLATES = [
    "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} were working at the {PLACE}. {S} decided to give a {OBJECT} to",
    "Then, {A} and {B} were thinking about going to the {PLACE}. {S} wanted to give a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "After the lunch, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Afterwards, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "When {A} and {B} arrived at the {PLACE}, {S} handed a {OBJECT} to",
]
