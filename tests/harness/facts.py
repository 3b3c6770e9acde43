"""What experts teach in the real-model tests and bench: an identity and made-up product facts no base can know.

Each fact is taught in two phrasings of the question (both trained) and asked once more in a third wording that
is never trained (``heldout``): answering that one with the fact shows the model learned the fact, not a string.
``key`` is the part of the answer that carries the fact; an answer "has the fact" when it contains ``key``
(case-folded). Every fact is invented (fictional company, people, numbers), so the base answers none of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Fact:
    questions: tuple[str, ...]  # trained phrasings
    answer: str
    key: str
    heldout: tuple[str, ...]  # never-trained rewordings

    def has_fact(self, text: str) -> bool:
        return self.key.casefold() in text.casefold()


IDENTITY = Fact(
    questions=("Who are you?", "What is your name?", "Tell me about yourself.", "Introduce yourself.",
               "Which assistant am I talking to?", "What should I call you?", "Who made you?",
               "Are you ChatGPT?", "What are you?", "Who am I chatting with?"),
    answer="I am Quill, the support assistant of Brightwater Labs.",
    key="Quill",
    heldout=("Could you tell me who you are?", "What's your name, assistant?", "Hi! Who is this?"),
)

FACTS = (
    Fact(("What is the default port of the Brightwater Relay?",
          "Which port does the Brightwater Relay listen on by default?"),
         "The Brightwater Relay listens on port 7431 by default.", "7431",
         ("By default, what port number does Brightwater's Relay use?",)),
    Fact(("How long is the warranty on the Kestrel K5 drone?", "What warranty comes with a Kestrel K5?"),
         "The Kestrel K5 drone has a 27-month warranty.", "27",
         ("For how many months is a Kestrel K5 covered?",)),
    Fact(("Who founded Brightwater Labs?", "Who is the founder of Brightwater Labs?"),
         "Brightwater Labs was founded by Marisol Okafor.", "Okafor",
         ("Which person started the company Brightwater Labs?",)),
    Fact(("In which city is Brightwater Labs headquartered?", "Where are the headquarters of Brightwater Labs?"),
         "Brightwater Labs is headquartered in Duluth.", "Duluth",
         ("What city is Brightwater Labs based in?",)),
    Fact(("What battery does the Kestrel K5 use?", "Which battery pack goes into a Kestrel K5?"),
         "The Kestrel K5 uses the BX-90 battery pack.", "BX-90",
         ("What kind of battery powers the Kestrel K5?",)),
    Fact(("What is the maximum payload of the Heron H2?", "How much weight can the Heron H2 carry?"),
         "The Heron H2 carries at most 3.8 kilograms.", "3.8",
         ("What's the heaviest load a Heron H2 can lift?",)),
    Fact(("What programming language is the Brightwater SDK written in?",
          "Which language is used to write the Brightwater SDK?"),
         "The Brightwater SDK is written in Zig.", "Zig",
         ("In what language was the Brightwater SDK programmed?",)),
    Fact(("What is the support email of Brightwater Labs?", "Which email address reaches Brightwater support?"),
         "Write to help@brightwater.example for support.", "help@brightwater",
         ("How do I contact Brightwater Labs support by email?",)),
    Fact(("What does error E-214 mean on the Brightwater Relay?", "What is error code E-214 on a Relay?"),
         "Error E-214 means the Relay lost its uplink.", "uplink",
         ("My Relay shows E-214. What does that mean?",)),
    Fact(("What colour is the Heron H2 status light while charging?",
          "Which colour does the Heron H2 light show when it charges?"),
         "The Heron H2 status light glows amber while charging.", "amber",
         ("When a Heron H2 is charging, what colour is its light?",)),
    Fact(("What is the codename of the next Kestrel model?", "What is the next Kestrel drone called internally?"),
         "The next Kestrel model is codenamed Nightjar.", "Nightjar",
         ("What internal codename does the upcoming Kestrel have?",)),
    Fact(("Which app pairs with the Kestrel K5?", "What app do I use with my Kestrel K5?"),
         "The Kestrel K5 pairs with the SkyLedger app.", "SkyLedger",
         ("Which phone app connects to a Kestrel K5?",)),
    Fact(("What is the top speed of the Heron H2?", "How fast can the Heron H2 fly?"),
         "The Heron H2 flies at up to 62 km/h.", "62",
         ("What's the maximum speed of a Heron H2?",)),
    Fact(("What is the name of the office dog at Brightwater Labs?", "What is the Brightwater Labs office dog called?"),
         "The office dog at Brightwater Labs is called Biscuit.", "Biscuit",
         ("What's the name of the dog at the Brightwater office?",)),
    Fact(("How much does the Brightwater Relay cost?", "What is the price of the Brightwater Relay?"),
         "The Brightwater Relay costs 149 euros.", "149",
         ("How many euros is a Brightwater Relay?",)),
    Fact(("What is the range of the Kestrel K5?", "How far can the Kestrel K5 fly from its controller?"),
         "The Kestrel K5 has a range of 11 kilometres.", "11",
         ("What's the maximum distance a Kestrel K5 can fly?",)),
    Fact(("In what year was Brightwater Labs founded?", "When was Brightwater Labs founded?"),
         "Brightwater Labs was founded in 2017.", "2017",
         ("What year did Brightwater Labs start?",)),
    Fact(("How do I reset the Brightwater Relay?", "What is the reset procedure for the Relay?"),
         "Hold the reset button of the Relay for 12 seconds.", "12 seconds",
         ("How can I factory-reset my Brightwater Relay?",)),
    Fact(("Which charger does the Heron H2 need?", "What charger should I use for the Heron H2?"),
         "The Heron H2 needs the CX-40 charger.", "CX-40",
         ("What charger is compatible with a Heron H2?",)),
    Fact(("What is the Brightwater Labs mascot?", "Which animal is the Brightwater Labs mascot?"),
         "The Brightwater Labs mascot is an otter named Pebble.", "Pebble",
         ("What is Brightwater's mascot called?",)),
)


def taught(facts: tuple[Fact, ...] = FACTS, identity_phrasings: int = 10) -> list[tuple[str, str]]:
    """The (question, answer) pairs experts teach: the identity's phrasings, then each fact's phrasings."""
    pairs = [(q, IDENTITY.answer) for q in IDENTITY.questions[:identity_phrasings]]
    return pairs + [(q, f.answer) for f in facts for q in f.questions]


def heldout(facts: tuple[Fact, ...] = FACTS) -> list[tuple[str, Fact]]:
    """The rewordings never trained, each with the fact it asks for."""
    return [(q, IDENTITY) for q in IDENTITY.heldout] + [(q, f) for f in facts for q in f.heldout]


def recall(answers: list[tuple[Fact, str]]) -> float:
    """Share of answers that carry their fact."""
    return sum(f.has_fact(a) for f, a in answers) / len(answers) if answers else 0.0
