"""Small generated fine-tuning tasks with held-out test sets: a classification, an extraction and a
format-following task. Each task's test examples come from templates (and, where it matters, values) that
no training example uses, so a model that passes has learned the task, not the strings.

    task = TASKS["intent"]
    train, test = task.examples(seed=0)        # 150 and 60 chat examples
    task.jsonl(train)                          # a training file for /v1/files
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Example = dict[str, Any]  # {"messages": [...], "answer": str, "fields": {...}}


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    instruction: str
    make: Callable[[random.Random, bool], tuple[str, str, dict[str, str]]]
    """(rng, held_out) -> (user message, answer, fields); ``held_out`` draws from the test templates."""

    def example(self, rng: random.Random, held_out: bool) -> Example:
        user, answer, fields = self.make(rng, held_out)
        messages = [{"role": "system", "content": self.instruction}, {"role": "user", "content": user}]
        return {"messages": messages, "answer": answer, "fields": fields}

    def examples(self, seed: int = 0, n_train: int = 150, n_test: int = 60) -> tuple[list[Example], list[Example]]:
        rng = random.Random(f"{self.name}-{seed}")
        train = [self.example(rng, held_out=False) for _ in range(n_train)]
        test = [self.example(rng, held_out=True) for _ in range(n_test)]
        return train, test

    @staticmethod
    def jsonl(examples: list[Example]) -> bytes:
        lines = [
            json.dumps({"messages": [*e["messages"], {"role": "assistant", "content": e["answer"]}]}) for e in examples
        ]
        return ("\n".join(lines) + "\n").encode()


# -- intent routing (classification) -----------------------------------------------------------------------------

_PRODUCTS = ["router", "laptop", "phone plan", "smart watch", "printer", "headset", "tablet", "camera"]
_INTENT_TRAIN = {
    "billing": [
        "I was charged twice for my {p} this month.",
        "Why is my invoice for the {p} higher than usual?",
        "Can you explain the extra fee on my {p} bill?",
        "I need a refund for a duplicate payment on the {p}.",
        "My card was billed but the {p} order shows unpaid.",
        "Please send me a copy of the receipt for my {p}.",
        "The amount taken for the {p} does not match the price.",
        "How do I update the credit card used for my {p}?",
        "You billed me for a {p} I returned last month.",
        "Is there a late fee if I pay the {p} invoice next week?",
        "The {p} payment failed, can I try another card?",
        "I see two identical transactions for the {p} on my statement.",
        "Can I split the cost of the {p} into monthly installments?",
        "My discount code was not applied to the {p} invoice.",
        "Who do I talk to about a wrong VAT amount on the {p}?",
        "The {p} subscription price went up without notice, why?",
    ],
    "tech_support": [
        "My {p} keeps restarting on its own.",
        "The {p} won't connect to wifi anymore.",
        "I get an error code when I turn on the {p}.",
        "The screen of my {p} stays black after the update.",
        "How do I reset my {p} to factory settings?",
        "My {p} is really slow since yesterday.",
        "The {p} makes a strange noise and then freezes.",
        "Bluetooth pairing with the {p} fails every time.",
        "The battery of my {p} drains in an hour.",
        "My {p} doesn't turn on even when charging.",
        "The touchscreen on the {p} stopped responding.",
        "Software update for the {p} is stuck at 50 percent.",
        "The {p} says storage is full but I deleted everything.",
        "My {p} won't charge past 80 percent.",
        "Every time I open the settings the {p} crashes.",
        "The camera app on the {p} shows only a grey picture.",
    ],
    "sales": [
        "Do you have a discount if I buy three {p}s?",
        "What is the price of the newest {p}?",
        "Is the premium {p} available in blue?",
        "I'd like a quote for 20 {p}s for my office.",
        "Which {p} would you recommend for a student?",
        "Are there any deals on the {p} this weekend?",
        "Can I upgrade to a better {p} model?",
        "What's the difference between the basic and pro {p}?",
        "Do you offer student pricing on the {p}?",
        "I want to order two more {p}s for my team.",
        "When will the new {p} be in stock?",
        "Can I trade in my old {p} for a new one?",
        "Does the {p} come in a larger size?",
        "I'm comparing the {p} with a competitor's, why should I buy yours?",
        "Can I reserve the next {p} before it launches?",
        "Can I try the {p} in one of your shops before buying?",
    ],
    "cancellation": [
        "I want to cancel my {p} subscription.",
        "Please close my account and stop the {p} service.",
        "How do I end my {p} contract early?",
        "Cancel the renewal of my {p} plan, please.",
        "I no longer need the {p}, terminate my membership.",
        "Stop charging me, I'm quitting the {p} service.",
        "I'd like to unsubscribe from the {p} program.",
        "Please don't renew my {p} next month, I'm leaving.",
        "I'm switching providers, cancel my {p} line.",
        "End my {p} plan at the end of this billing cycle.",
        "How do I delete my {p} account for good?",
        "I'd like to opt out of the {p} service entirely.",
        "My contract for the {p} ends soon and I won't be renewing.",
        "Please deactivate the {p} and confirm in writing.",
        "What's the notice period to quit the {p} plan?",
        "I've found a cheaper option, so cancel the {p} please.",
    ],
    "shipping": [
        "Where is my {p}? It was supposed to arrive Monday.",
        "The tracking number for my {p} doesn't work.",
        "My {p} was delivered to the wrong address.",
        "How long does delivery of a {p} take?",
        "The box with my {p} arrived damaged.",
        "Can I change the delivery date for my {p}?",
        "The courier says my {p} was lost in transit.",
        "Do you ship the {p} to Canada?",
        "Is express shipping available for the {p}?",
        "Can I pick up the {p} at a store instead?",
        "The parcel with my {p} is stuck at customs.",
        "Nobody was home, how do I reschedule the {p} delivery?",
        "The {p} order shows shipped but the tracking hasn't moved in days.",
        "Can you deliver the {p} on a Saturday?",
        "Only half of my {p} order arrived in the parcel.",
        "What does it cost to ship a {p} overnight?",
    ],
}
_INTENT_TEST = {
    "billing": [
        "There's a charge from you that I don't recognize, it mentions the {p}.",
        "Hello, I paid for the {p} with PayPal but got charged again on my card.",
        "Could someone check why I owe money on the {p} when I already paid?",
        "Need an itemized statement for the {p} purchase for my accountant.",
    ],
    "tech_support": [
        "Hi, the {p} shows a blinking red light and nothing works.",
        "After plugging it in, the {p} gets very hot and shuts down.",
        "I can't log in to the app that controls my {p}.",
        "The sound on the {p} cuts out every few seconds.",
    ],
    "sales": [
        "Thinking about getting a {p} for my dad, what options do you have?",
        "Is there a bundle deal if I get the {p} with accessories?",
        "We're a small school looking to purchase {p}s in bulk.",
        "How much would it cost to get the {p} with extended warranty?",
    ],
    "cancellation": [
        "Time to say goodbye, please shut down my {p} plan.",
        "I'm moving abroad so I need to terminate the {p} subscription.",
        "Remove my {p} auto-renewal and close everything.",
        "Please process the termination of my {p} service today.",
    ],
    "shipping": [
        "It's been two weeks and the {p} still hasn't shown up.",
        "The package with the {p} says delivered but I never got it.",
        "Which carrier are you using to send my {p}?",
        "Could you send the {p} to my office instead of my home?",
    ],
}


def _intent(rng: random.Random, held_out: bool) -> tuple[str, str, dict[str, str]]:
    templates = _INTENT_TEST if held_out else _INTENT_TRAIN
    label = rng.choice(sorted(templates))
    text = rng.choice(templates[label]).format(p=rng.choice(_PRODUCTS))
    return text, label, {"label": label}


# -- order extraction ---------------------------------------------------------------------------------------------

# As varied as a real support inbox (150 orders come from many places); the test cities are none of these.
_CITIES_TRAIN = [
    "Paris", "Lyon", "Berlin", "Madrid", "Rome", "Vienna", "Lisbon", "Prague", "Dublin", "Oslo", "Hamburg",
    "Naples", "Zurich", "Antwerp", "Bordeaux", "Valencia", "Milan", "Gdansk", "Bergen", "Turin", "Leeds",
    "Cork", "Malaga", "Bilbao", "Lille", "Graz", "Brno", "Utrecht", "Aarhus", "Tampere", "Athens", "Sofia",
    "Bucharest", "Budapest", "Warsaw", "Vilnius", "Riga", "Tallinn", "Helsinki", "Stockholm", "Gothenburg",
    "Copenhagen", "Amsterdam", "Rotterdam", "Brussels", "Luxembourg", "Basel", "Lausanne", "Innsbruck",
    "Salzburg", "Ljubljana", "Zagreb", "Split", "Belgrade", "Skopje", "Tirana", "Valletta", "Nicosia",
    "Marseille", "Toulouse", "Nantes", "Strasbourg", "Nice", "Grenoble", "Montpellier", "Rennes", "Dijon",
    "Frankfurt", "Cologne", "Stuttgart", "Dresden", "Leipzig", "Bremen", "Hanover", "Nuremberg", "Bonn",
    "Florence", "Venice", "Bologna", "Genoa", "Palermo", "Verona", "Pisa", "Bari", "Granada", "Cordoba",
    "Zaragoza", "Alicante", "Murcia", "Coimbra", "Braga", "Faro", "Edinburgh", "Glasgow", "Manchester",
    "Liverpool", "Bristol", "Cardiff", "Belfast", "Galway", "Limerick", "Reykjavik", "Trondheim", "Malmo",
    "Uppsala", "Odense", "Turku", "Tartu", "Kaunas", "Lodz", "Poznan", "Wroclaw", "Ostrava", "Kosice",
    "Bratislava", "Debrecen", "Cluj", "Varna", "Plovdiv", "Thessaloniki", "Patras", "Izmir", "Ankara",
]  # fmt: skip
_CITIES_TEST = ["Seville", "Munich", "Porto", "Krakow", "Geneva", "Ghent"]
_EXTRACT_TRAIN = [
    "Hi, my order {n} hasn't arrived in {c} yet.",
    "Order number {n} was shipped to {c} but I moved.",
    "Please check order {n}, delivery address is in {c}.",
    "I'm in {c} and still waiting for order {n}.",
    "Can you tell me where order {n} is? I live in {c}.",
    "The parcel for order {n} is stuck somewhere near {c}.",
    "Regarding order {n}: the courier in {c} says it's missing.",
    "{c} customer here, order {n} came without the manual.",
]
_EXTRACT_TEST = [
    "Good morning! Writing from {c} about my purchase, reference {n}.",
    "Purchase #{n} should have gone to {c} last Friday, any news?",
    "Could the warehouse re-send {n}? Destination is {c}.",
    "My package ({n}) left the depot but never reached {c}.",
]


def _extract(rng: random.Random, held_out: bool) -> tuple[str, str, dict[str, str]]:
    number, city = str(rng.randint(10000, 99999)), rng.choice(_CITIES_TEST if held_out else _CITIES_TRAIN)
    text = rng.choice(_EXTRACT_TEST if held_out else _EXTRACT_TRAIN).format(n=number, c=city)
    return text, f"order={number}; city={city}", {"order": number, "city": city}


# -- contact to JSON (format following) ---------------------------------------------------------------------------

_FIRST = ["Maria", "John", "Aisha", "Kenji", "Lucas", "Sofia", "Omar", "Elena", "David", "Priya", "Tom", "Nina"]
_LAST = ["Lopez", "Smith", "Khan", "Tanaka", "Martin", "Rossi", "Haddad", "Novak", "Brown", "Patel", "Berg", "Costa"]
_TOWNS = ["Madrid", "Boston", "Cairo", "Osaka", "Toronto", "Milan", "Dubai", "Warsaw", "Denver", "Pune", "Bergen"]
_CONTACT_TRAIN = [
    "{f} {l}, {a}, from {t}",
    "{f} {l} ({a}) lives in {t}",
    "Name: {f} {l} / Age: {a} / City: {t}",
    "{t} resident {f} {l}, aged {a}",
    "{f} {l} is {a} years old and based in {t}",
    "contact: {f} {l}; {a} yrs; {t}",
    "{t} office: {l}, {f} (age {a})",  # surname first, as many address books write it
]
_CONTACT_TEST = [
    "Age {a} | {f} {l} | {t}",
    "From {t}: {f} {l}, {a} years",
    "{l}, {f} - {a} - {t}",
]


def _contact(rng: random.Random, held_out: bool) -> tuple[str, str, dict[str, str]]:
    first, last, town, age = rng.choice(_FIRST), rng.choice(_LAST), rng.choice(_TOWNS), rng.randint(18, 90)
    text = rng.choice(_CONTACT_TEST if held_out else _CONTACT_TRAIN).format(f=first, l=last, a=age, t=town)
    answer = json.dumps({"name": f"{first} {last}", "age": age, "city": town})
    return text, answer, {"name": f"{first} {last}", "age": str(age), "city": town}


TASKS: dict[str, Task] = {
    "intent": Task(
        "intent",
        "classification",
        "Route the customer's message to one team: billing, tech_support, sales, cancellation or shipping. "
        "Answer with the team name only.",
        _intent,
    ),
    "extract": Task(
        "extract",
        "extraction",
        "Extract the order number and the city from the message. Answer exactly as: order=<number>; city=<city>",
        _extract,
    ),
    "contact": Task(
        "contact",
        "format following",
        'Rewrite the contact as JSON with the keys "name", "age" (a number) and "city".',
        _contact,
    ),
}


# -- preference tasks (DPO) ---------------------------------------------------------------------------------------
# Plain questions with no instruction about the answer's style: the pairs alone say which style is preferred, and
# the base model answers the other way. Held-out prompts come from templates (and subjects) no pair uses.

Pair = dict[str, str]  # {"prompt", "preferred", "non_preferred"}

_COUNTRIES = {
    "France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin", "Japan": "Tokyo", "Egypt": "Cairo",
    "Canada": "Ottawa", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo", "Greece": "Athens", "Chile": "Santiago",
    "Poland": "Warsaw", "Portugal": "Lisbon", "Ireland": "Dublin", "Austria": "Vienna", "Cuba": "Havana",
}  # fmt: skip
_COLOURS = {
    "grass": "green", "the sky": "blue", "snow": "white", "coal": "black", "a banana": "yellow", "a tomato": "red",
    "an orange": "orange", "a lemon": "yellow", "milk": "white", "a strawberry": "red", "a crow": "black",
}  # fmt: skip
_OPPOSITES = {
    "hot": "cold", "up": "down", "big": "small", "fast": "slow", "early": "late", "open": "closed", "light": "dark",
    "happy": "sad", "full": "empty", "old": "young", "hard": "soft", "rich": "poor", "wet": "dry",
}  # fmt: skip
_LEGS = {
    "dog": "four",
    "spider": "eight",
    "bird": "two",
    "ant": "six",
    "horse": "four",
    "chicken": "two",
    "cat": "four",
}
_SOUNDS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "pig": "oink", "owl": "hoot"}
_SIDES = {"triangle": "three", "square": "four", "pentagon": "five", "hexagon": "six", "octagon": "eight"}
_MADE_OF = {"bricks": "clay", "tables": "wood", "windows": "glass", "coins": "metal", "candles": "wax"}
_WORKPLACES = {"hospital": "doctor", "school": "teacher", "kitchen": "chef", "farm": "farmer", "library": "librarian"}
_FACTS: list[tuple[str, str, str]] = [
    *((f"What is the capital of {k}?", v, f"The capital of {k} is {v}.") for k, v in _COUNTRIES.items()),
    *((f"What colour is {k}?", v, f"{k[0].upper()}{k[1:]} is usually {v}.") for k, v in _COLOURS.items()),
    *((f"What is the opposite of {k}?", v, f"The opposite of {k} is {v}.") for k, v in _OPPOSITES.items()),
    *((f"How many legs does a {k} have?", v, f"A {k} has {v} legs.") for k, v in _LEGS.items()),
    *((f"What sound does a {k} make?", v, f"A {k} says {v}.") for k, v in _SOUNDS.items()),
    *((f"How many sides does a {k} have?", v, f"A {k} has {v} sides.") for k, v in _SIDES.items()),
    *((f"What are {k} made of?", v, f"{k[0].upper()}{k[1:]} are usually made of {v}.") for k, v in _MADE_OF.items()),
    *((f"Who works in a {k}?", v, f"A {v} works in a {k}.") for k, v in _WORKPLACES.items()),
]
"""(question, one-word answer, the answer as a sentence)."""
_HELD_OUT_QUESTIONS = [
    *(f"Which language do people mostly speak in {c}?" for c in ("Brazil", "Mexico", "Sweden", "Turkey", "China")),
    *(f"What is the plural of {w}?" for w in ("mouse", "child", "goose", "tooth", "woman")),
    *(f"Which season comes after {s}?" for s in ("winter", "spring", "summer", "autumn")),
    *(f"What is a baby {a} called?" for a in ("cat", "dog", "cow", "sheep", "horse", "goat")),
    *(f"Which planet is {d}?" for d in ("closest to the sun", "the largest", "known as the red planet")),
    *(f"What do {a} eat?" for a in ("pandas", "koalas", "rabbits", "cows")),
    *(f"Which metal is {d}?" for d in ("liquid at room temperature", "used in electrical wires", "the most valuable")),
    *(f"What is frozen {x} called?" for x in ("water", "rain")),
    *(f"Which instrument has {d}?" for d in ("88 keys", "six strings", "a bow and four strings")),
    *(f"What gas do {x}?" for x in ("plants release", "we breathe out", "balloons that float contain")),
]


def _fact(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(_FACTS)


_LISTS_TRAIN = {
    "fruits": ["apple", "banana", "cherry", "mango", "pear", "plum", "grape", "peach"],
    "colours": ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown"],
    "farm animals": ["cow", "pig", "sheep", "goat", "horse", "chicken", "duck", "donkey"],
    "sports": ["football", "tennis", "swimming", "cycling", "golf", "rugby", "hockey", "boxing"],
    "vegetables": ["carrot", "potato", "onion", "pepper", "leek", "cabbage", "spinach", "pea"],
    "musical instruments": ["piano", "guitar", "violin", "drum", "flute", "trumpet", "cello", "harp"],
    "kitchen tools": ["knife", "spoon", "whisk", "pan", "ladle", "grater", "peeler", "tongs"],
    "trees": ["oak", "pine", "birch", "maple", "willow", "cedar", "elm", "beech"],
}
_LISTS_TRAIN_TEMPLATES = ["Name three {c}.", "List three {c}.", "Give me three {c}.", "Tell me three {c}."]
_LISTS_HELD_OUT = [
    *(f"What are some popular {c}?" for c in ("board games", "dog breeds", "pizza toppings", "car brands")),
    *(f"Which {c} do you know?" for c in ("ocean animals", "European rivers", "flowers", "gemstones")),
    *(f"Suggest a few {c}." for c in ("hobbies", "breakfast foods", "school subjects", "winter clothes")),
    *(f"What {c} would you recommend?" for c in ("houseplants", "pets for a child", "summer drinks")),
    *(f"Can you think of some {c}?" for c in ("birds", "insects", "desserts", "professions", "shapes")),
]


def _as_sentence(items: list[str]) -> str:
    return f"{', '.join(items[:-1])} and {items[-1]}"


def _one_word(rng: random.Random) -> Pair:
    question, word, sentence = _fact(rng)
    return {"prompt": question, "preferred": f"{word[0].upper()}{word[1:]}.", "non_preferred": sentence}


def _bullets(rng: random.Random) -> Pair:
    category = rng.choice(sorted(_LISTS_TRAIN))
    items = rng.sample(_LISTS_TRAIN[category], 3)
    prompt = rng.choice(_LISTS_TRAIN_TEMPLATES).format(c=category)
    bullets = "\n".join(f"- {item[0].upper()}{item[1:]}" for item in items)
    prose = f"Three {category} are {_as_sentence(items)}."
    return {"prompt": prompt, "preferred": bullets, "non_preferred": prose}


def _capitals(rng: random.Random) -> Pair:
    question, _, sentence = _fact(rng)
    return {"prompt": question, "preferred": sentence.upper(), "non_preferred": sentence}


def _is_one_word(answer: str) -> bool:
    return len(answer.strip().strip(".!").split()) == 1


def _is_bullet_list(answer: str) -> bool:
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    return len(lines) >= 2 and all(line.startswith(("- ", "* ", "• ")) for line in lines)


def _is_upper_case(answer: str) -> bool:
    letters = [c for c in answer if c.isalpha()]
    return bool(letters) and all(c.isupper() for c in letters)


@dataclass(frozen=True)
class PreferenceTask:
    """Pairs that prefer one style of answer to the one the base model gives, and held-out prompts to see whether
    a model answers in the preferred style (``follows``)."""

    name: str
    style: str
    make: Callable[[random.Random], Pair]
    held_out: list[str]
    follows: Callable[[str], bool]

    def examples(self, seed: int = 0, n_train: int = 200) -> tuple[list[Pair], list[str]]:
        rng = random.Random(f"{self.name}-{seed}")
        return [self.make(rng) for _ in range(n_train)], list(self.held_out)

    @staticmethod
    def dpo_jsonl(pairs: list[Pair]) -> bytes:
        lines = [
            json.dumps(
                {
                    "input": {"messages": [{"role": "user", "content": pair["prompt"]}]},
                    "preferred_output": [{"role": "assistant", "content": pair["preferred"]}],
                    "non_preferred_output": [{"role": "assistant", "content": pair["non_preferred"]}],
                }
            )
            for pair in pairs
        ]
        return ("\n".join(lines) + "\n").encode()

    @staticmethod
    def sft_jsonl(pairs: list[Pair]) -> bytes:
        """The preferred answers alone, as a supervised training file (what SFT on the same data would see)."""
        lines = [
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": p["prompt"]},
                        {"role": "assistant", "content": p["preferred"]},
                    ]
                }
            )
            for p in pairs
        ]
        return ("\n".join(lines) + "\n").encode()


PREFERENCE_TASKS: dict[str, PreferenceTask] = {
    "one_word": PreferenceTask("one_word", "one word, not a sentence", _one_word, _HELD_OUT_QUESTIONS, _is_one_word),
    "bullets": PreferenceTask("bullets", "a bullet list, not prose", _bullets, _LISTS_HELD_OUT, _is_bullet_list),
    "capitals": PreferenceTask("capitals", "in capital letters", _capitals, _HELD_OUT_QUESTIONS, _is_upper_case),
}
