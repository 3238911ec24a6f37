"""Built-in synthetic task suites, deterministic from a seed.

Each suite has *seen* tasks (their descriptions are trained on) and *unseen* tasks (new
descriptions, never trained on) that recombine skills the seen tasks teach.

- ``reasoning``: the system prompt defines a string rule in words (one of several paraphrases, in
  one of several framings), optionally followed by few-shot examples; the input is a short word and
  the target the transformed word. Unseen tasks use held-out paraphrases and framings.
- ``tools``: the system prompt defines a set of tools (names, descriptions, argument formats) in the
  style of GPT4Tools; the input is a user request and the target the correct call
  ``name(arg="value")``. Tool names and argument names vary between tasks, so the answer depends on
  the tool definitions. Unseen tasks use tool sets (combinations of names and intents) never seen
  in training. The definitions dominate the prompt length.

Splits: ``train`` (examples of seen tasks for training), ``seen`` (other examples of the same
seen tasks, for evaluation), ``unseen`` (examples of the unseen tasks). Evaluation files carry
``2 * per_task`` examples per task: the first half adapts the per-task LoRA baseline, the second
half is scored (see docs/data-format.md).
"""

from __future__ import annotations

import hashlib
import itertools
import random

from ..errors import LoragenError

SPLITS = ("train", "seen", "unseen")

# ----------------------------------------------------------------------------------- reasoning

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_VOWELS = set("aeiou")


def _caesar(w: str, k: int) -> str:
    return "".join(_LETTERS[(_LETTERS.index(c) + k) % 26] for c in w)


# rule -> (function, paraphrases). Paraphrases 0-3 are seen, 4-5 unseen.
RULES: dict[str, tuple] = {
    "reverse": (lambda w: w[::-1], [
        "reverse the word", "write the letters in reverse order", "spell the word backwards",
        "output the word read from right to left", "mirror the word, last letter first",
        "turn the word around",
    ]),
    "upper": (lambda w: w.upper(), [
        "write the word in capital letters", "convert every letter to uppercase",
        "shout the word in all caps", "make each letter a capital", "uppercase the whole word",
        "answer with the word in block capitals",
    ]),
    "shift1": (lambda w: _caesar(w, 1), [
        "replace each letter by the next letter of the alphabet", "shift every letter forward by one",
        "apply a caesar shift of one", "move each letter one step later in the alphabet",
        "advance all letters by one position", "encode the word with rot1",
    ]),
    "double": (lambda w: "".join(c + c for c in w), [
        "write every letter twice", "double each letter", "repeat each character two times",
        "say each letter two times in a row", "duplicate every letter", "stutter each letter once",
    ]),
    "swap": (lambda w: w[-1] + w[1:-1] + w[0], [
        "swap the first and the last letter", "exchange the first letter with the last one",
        "trade places of the first and final letters", "switch the two end letters",
        "put the last letter first and the first letter last", "interchange the outer letters",
    ]),
    "rotate": (lambda w: w[1:] + w[0], [
        "move the first letter to the end", "rotate the word left by one letter",
        "take the first letter and append it at the end", "shift the letters one place to the left",
        "cycle the opening letter to the back", "send the leading letter to the tail",
    ]),
    "novowel": (lambda w: "".join(c for c in w if c not in _VOWELS) or w, [
        "remove all vowels", "delete the letters a, e, i, o and u", "drop every vowel",
        "keep only the consonants", "strip out the vowels", "write the word without its vowels",
    ]),
    "first2": (lambda w: w[:2] + w[:2], [
        "repeat the first two letters twice", "write the first two letters two times",
        "take the opening pair of letters and say it twice", "echo the first two letters",
        "output the two leading letters, then them again", "double the word's first two letters",
    ]),
}
SEEN_PARAPHRASES = (0, 1, 2, 3)
UNSEEN_PARAPHRASES = (4, 5)
# framings: (text template, with few-shot examples). 0-1 seen, 2 unseen.
FRAMINGS = (
    ("Task: {rule}.", False),
    ("Rule: {rule}. Examples:", True),
    ("Instructions: for the given word, {rule}. For instance:", True),
)
SEEN_FRAMINGS = (0, 1)
UNSEEN_FRAMINGS = (2,)


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(4))


def _reasoning_tasks(split: str, seed: int) -> list[tuple[str, str, str]]:
    """(task_id, system, rule) for the split."""
    paraphrases, framings = ((SEEN_PARAPHRASES, SEEN_FRAMINGS) if split != "unseen"
                             else (UNSEEN_PARAPHRASES, UNSEEN_FRAMINGS + SEEN_FRAMINGS))
    out = []
    for rule, (fn, texts) in RULES.items():
        for p, f in itertools.product(paraphrases, framings):
            template, shots = FRAMINGS[f]
            system = template.format(rule=texts[p])
            if shots:
                # few-shot examples fixed per task (a seeded draw from the task's own id)
                rng = random.Random(_stable_seed("shots", rule, p, f, seed))
                system += "".join(f" {w} -> {fn(w)};" for w in (_word(rng) for _ in range(2)))
            tag = "u" if split == "unseen" else "s"
            out.append((f"reasoning-{tag}-{rule}-p{p}-f{f}", system, rule))
    return out


def _reasoning(split: str, per_task: int, seed: int) -> list[dict]:
    recs = []
    for task_id, system, rule in _reasoning_tasks(split, seed):
        fn = RULES[rule][0]
        rng = random.Random(_stable_seed(task_id, split, seed))
        for _ in range(per_task):
            w = _word(rng)
            recs.append({"task_id": task_id, "system": system, "input": w, "target": fn(w),
                         "suite": "reasoning", "split": split})
    return recs


# --------------------------------------------------------------------------------------- tools

# intent -> (argument values, query templates, [(tool name, argument name, description), ...])
INTENTS: dict[str, tuple] = {
    "weather": (["oslo", "paris", "lima", "rome", "kyiv", "baku", "doha", "riga"],
                ["weather in {v}?", "is it raining in {v}", "{v} forecast please"],
                [("get_weather", "city", "current weather for a city: temperature, rain and wind"),
                 ("forecast", "place", "returns the forecast of a place for today"),
                 ("sky_report", "town", "tells whether a town is sunny, rainy or windy")]),
    "timer": (["5", "10", "15", "20", "30", "45", "60", "90"],
              ["set a timer for {v} minutes", "remind me in {v} min", "countdown {v} minutes"],
              [("set_timer", "minutes", "starts a countdown timer of some minutes"),
               ("alarm_in", "mins", "rings an alarm after the given number of minutes"),
               ("countdown", "duration", "counts down a duration in minutes and beeps")]),
    "music": (["jazz", "rock", "salsa", "opera", "blues", "disco", "techno", "folk"],
              ["play some {v}", "put on {v} music", "i want to hear {v}"],
              [("play_music", "genre", "plays music of a genre on the speaker"),
               ("radio", "style", "tunes the radio to a station of a music style"),
               ("dj", "mood", "asks the dj to spin tracks matching a mood or genre")]),
    "call": (["mom", "bob", "alice", "dad", "sara", "tom", "ana", "li"],
             ["call {v}", "phone {v} now", "ring {v} please"],
             [("make_call", "contact", "places a phone call to a contact"),
              ("dial", "who", "dials the number of a person in the address book"),
              ("phone", "name", "starts a voice call with someone by name")]),
    "translate": (["hello", "thanks", "water", "bread", "train", "house", "night", "friend"],
                  ["translate {v} to french", "what is {v} in french", "say {v} in french"],
                  [("translate", "text", "translates a word or text into french"),
                   ("to_french", "word", "gives the french word for an english word"),
                   ("lingo", "phrase", "french translation service for short phrases")]),
    "stock": (["aapl", "msft", "tsla", "amzn", "nvda", "ibm", "meta", "intc"],
              ["price of {v} stock", "how is {v} trading", "{v} share price?"],
              [("stock_price", "ticker", "latest share price of a stock ticker"),
               ("quote", "symbol", "market quote for a ticker symbol"),
               ("market", "code", "shows how a listed company code is trading")]),
    "news": (["sports", "science", "politics", "travel", "health", "movies", "tech", "food"],
             ["latest {v} news", "any news about {v}", "headlines on {v}"],
             [("get_news", "topic", "fetches the latest headlines on a topic"),
              ("headlines", "section", "top stories of a newspaper section"),
              ("briefing", "subject", "a short news briefing about a subject")]),
    "light": (["kitchen", "bedroom", "garage", "office", "garden", "hall", "bath", "attic"],
              ["turn on the {v} light", "lights on in the {v}", "switch on {v} lamp"],
              [("lights_on", "room", "switches on the lights of a room"),
               ("lamp", "area", "turns on the lamp in an area of the house"),
               ("illuminate", "zone", "lights up a zone of the smart home")]),
}
TOOLS_PER_TASK = 3
TOOLS_HEADER = "Tools:\n"


def _tool_task(intents: tuple[str, ...], names: tuple[int, ...]) -> tuple[str, str]:
    lines = []
    for intent, n in zip(intents, names):
        name, arg, desc = INTENTS[intent][2][n]
        lines.append(f"- {name}: {desc}. Call: {name}({arg}=\"...\")\n")
    task_id = "tools-" + "-".join(f"{i}{n}" for i, n in zip(intents, names))
    return task_id, TOOLS_HEADER + "".join(lines)


def _tools_tasks(split: str, seed: int, n_seen: int = 160, n_unseen: int = 32) -> list[tuple]:
    """(task_id, system, intents, names). Seen and unseen tool sets are disjoint."""
    rng = random.Random(_stable_seed("tools-sets", seed))
    all_sets = [(ints, names)
                for ints in itertools.combinations(sorted(INTENTS), TOOLS_PER_TASK)
                for names in itertools.product(range(3), repeat=TOOLS_PER_TASK)]
    rng.shuffle(all_sets)
    chosen = all_sets[:n_seen] if split != "unseen" else all_sets[n_seen:n_seen + n_unseen]
    out = []
    for ints, names in chosen:
        order = list(range(TOOLS_PER_TASK))
        random.Random(_stable_seed("order", ints, names, seed)).shuffle(order)
        ints_o, names_o = tuple(ints[i] for i in order), tuple(names[i] for i in order)
        task_id, system = _tool_task(ints_o, names_o)
        out.append((task_id, system, ints_o, names_o))
    return out


def _tools(split: str, per_task: int, seed: int) -> list[dict]:
    recs = []
    for task_id, system, ints, names in _tools_tasks(split, seed):
        rng = random.Random(_stable_seed(task_id, split, seed))
        for _ in range(per_task):
            k = rng.randrange(len(ints))
            values, queries, tools = INTENTS[ints[k]]
            name, arg, _ = tools[names[k]]
            v = rng.choice(values)
            recs.append({"task_id": task_id, "system": system, "input": rng.choice(queries).format(v=v),
                         "target": f'{name}({arg}="{v}")', "suite": "tools", "split": split})
    return recs


# -------------------------------------------------------------------------------------- common


def task_skills(task_id: str) -> frozenset[str]:
    """What a built-in task asks for: its rule (reasoning) or its tool intents (tools). Two tasks
    with disjoint skills have nothing in common an answer could use: the evaluation's
    other-task control pairs such tasks. A task id of another origin is its own single skill."""
    parts = task_id.split("-")
    if parts[0] == "reasoning" and len(parts) == 5 and parts[2] in RULES:
        return frozenset({f"rule:{parts[2]}"})
    if parts[0] == "tools" and len(parts) > 1:
        intents = [p.rstrip("0123456789") for p in parts[1:]]
        if all(i in INTENTS for i in intents):
            return frozenset(f"intent:{i}" for i in intents)
    return frozenset({task_id})


SUITES = {"reasoning": _reasoning, "tools": _tools}
# training examples per seen task: string rules on random words need many examples to generalise
TRAIN_PER_TASK = {"reasoning": 160, "tools": 16}


def _stable_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def make_suite(suite: str, split: str, seed: int = 0, per_task: int | None = None) -> list[dict]:
    """Records of a built-in suite. ``per_task`` defaults to :data:`TRAIN_PER_TASK` for ``train`` and
    16 (8 to adapt the per-task LoRA baseline, then 8 to score) for the evaluation splits."""
    if suite not in SUITES:
        raise LoragenError(f"unknown suite '{suite}'; choose from {', '.join(SUITES)}")
    if split not in SPLITS:
        raise LoragenError(f"unknown split '{split}'; choose from {', '.join(SPLITS)}")
    if per_task is None:
        per_task = TRAIN_PER_TASK[suite] if split == "train" else 16
    if per_task < 1:
        raise LoragenError("per_task must be at least 1")
    # train and seen draw different examples of the same tasks (the split is part of the seed)
    return SUITES[suite](split, per_task, seed)
