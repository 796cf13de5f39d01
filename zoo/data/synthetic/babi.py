"""A simulator of the bAbI world for tasks qa1..qa5 (Weston et al. 2015 (bAbI)), the tasks that
BABILong (Kuratov et al. 2024) hides in long haystacks. Written from the task descriptions, not
from the bAbI generator: the stories are bAbI-like, not bAbI's exact distribution.

Every story is a list of facts followed by one question whose answer the facts determine. The
simulator keeps an explicit world state and only takes actions that are consistent with it, so
answers hold by construction:

    where[p]     location of person p (unknown until p first moves)
    holder[o]    person carrying object o, or none
    place[o]     location of o: its holder's location while carried, else where it was dropped
                 (unknown until someone first picks it up)
    trail[o]     o's successive distinct locations: trail[o][-1] = place[o]

Actions (and their preconditions):
    move(p, l)       "Mary moved to the bathroom."     l != where[p]; carried objects move along
    pickup(p, o)     "John picked up the football."    where[p] known, o not carried, place[o]
                                                       unknown or = where[p]
    drop(p, o)       "John dropped the football."      holder[o] = p
    give(p, o, q)    "Fred gave the football to Jeff." holder[o] = p, q != p, where[q] = where[p]

Tasks (one question at the end of the story):
    qa1 single supporting fact   moves only;            "Where is Mary?"            -> where[p]
    qa2 two supporting facts     moves, pickups, drops; "Where is the football?"    -> place[o]
    qa3 three supporting facts   same actions;          "Where was the football before the
                                 kitchen?" -> trail[o][i-1] where trail[o][i] = kitchen, asked
                                 only if kitchen occurs exactly once in trail[o] (well defined)
    qa4 two-argument relations   locations on a grid, one fact per edge of a random tree:
                                 "The office is north of the kitchen."; "What is north of the
                                 kitchen?" / "What is the kitchen south of?" -> a location; every
                                 location has its own grid cell, so answers are unique
    qa5 three-argument relations moves, pickups, drops, gives; about the gives g -> (giver,
                                 object, receiver): "Who gave the football to Jeff?", "What did
                                 Fred give to Jeff?", "Who did Fred give the football to?",
                                 "Who received the football?"; asked only if all gives matching
                                 the question agree on the answer

Answer labels (BABILong's scorer rule): qa1-qa4 the six locations, qa5 the people and objects.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from zoo.data.errors import DataError

BABI_VERSION = "babi-sim-v1 (memzoo world simulator, bAbI qa1-qa5 style; one question per story)"
BABI_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")

LOCATIONS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
PEOPLE = ("Mary", "John", "Daniel", "Sandra")  # qa1-qa3
PEOPLE_QA5 = ("Bill", "Fred", "Jeff", "Mary")  # BABILong's qa5 labels
OBJECTS = ("apple", "football", "milk")
TASK_LABELS: dict[str, tuple[str, ...]] = {
    "qa1": LOCATIONS, "qa2": LOCATIONS, "qa3": LOCATIONS, "qa4": LOCATIONS,
    "qa5": PEOPLE_QA5 + OBJECTS,
}

MOVE_VERBS = ("moved to", "went to", "journeyed to", "travelled to", "went back to")
PICK_VERBS = ("picked up", "got", "grabbed", "took")
DROP_VERBS = ("dropped", "discarded", "put down", "left")
GIVE_VERBS = ("gave", "handed", "passed")
# qa4 grid steps (dx, dy) and opposite directions.
DIRECTIONS = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}

# Default story sizes (inclusive ranges of the number of facts), and the allowed num_facts.
DEFAULT_SIZES = {"qa1": (2, 10), "qa2": (6, 20), "qa3": (10, 30), "qa4": (2, 2), "qa5": (5, 15)}
SIZE_LIMITS = {"qa1": (1, 1000), "qa2": (2, 1000), "qa3": (3, 1000), "qa4": (1, 5), "qa5": (4, 1000)}
# Relative weights of the action kinds per task (among the kinds feasible in the current state).
ACTION_WEIGHTS = {
    "qa1": {"move": 1.0},
    "qa2": {"move": 0.5, "pickup": 0.3, "drop": 0.2},
    "qa3": {"move": 0.6, "pickup": 0.3, "drop": 0.1},
    "qa5": {"move": 0.4, "pickup": 0.25, "drop": 0.05, "give": 0.3},
}
_MAX_TRIES = 1000


@dataclasses.dataclass
class BabiStory:
    """One sample: `facts` (sentences, in order), then `question`; `answer` is one label of
    TASK_LABELS[task]; `supporting` are indices into `facts` of the facts the answer needs."""

    task: str
    facts: list[str]
    question: str
    answer: str
    supporting: list[int]


@dataclasses.dataclass
class _World:
    """The world state of the module docstring, plus the fact indices that established it."""

    people: tuple[str, ...]
    facts: list[str] = dataclasses.field(default_factory=list)
    where: dict[str, str] = dataclasses.field(default_factory=dict)
    moved_at: dict[str, int] = dataclasses.field(default_factory=dict)  # person -> last move fact
    holder: dict[str, str] = dataclasses.field(default_factory=dict)
    got_at: dict[str, int] = dataclasses.field(default_factory=dict)  # object -> pickup/receive fact
    place: dict[str, str] = dataclasses.field(default_factory=dict)
    place_support: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    # object -> [(location, facts that put it there)], consecutive locations distinct
    trail: dict[str, list[tuple[str, list[int]]]] = dataclasses.field(default_factory=dict)
    gives: list[tuple[str, str, str, int]] = dataclasses.field(default_factory=list)  # (g, o, r, fact)

    def _say(self, sentence: str) -> int:
        self.facts.append(sentence)
        return len(self.facts) - 1

    def _relocate(self, obj: str, loc: str, support: list[int]) -> None:
        self.place[obj] = loc
        self.place_support[obj] = sorted(set(support))
        trail = self.trail.setdefault(obj, [])
        if not trail or trail[-1][0] != loc:
            trail.append((loc, sorted(set(support))))

    def move(self, person: str, loc: str, verb: str) -> None:
        i = self._say(f"{person} {verb} the {loc}.")
        self.where[person], self.moved_at[person] = loc, i
        for obj, who in self.holder.items():
            if who == person:
                self._relocate(obj, loc, [self.got_at[obj], i])

    def pickup(self, person: str, obj: str, verb: str) -> None:
        i = self._say(f"{person} {verb} the {obj}.")
        self.holder[obj], self.got_at[obj] = person, i
        self._relocate(obj, self.where[person], [self.moved_at[person], i])

    def drop(self, person: str, obj: str, verb: str) -> None:
        i = self._say(f"{person} {verb} the {obj}.")
        del self.holder[obj]
        self.place_support[obj] = [self.moved_at[person], i]

    def give(self, giver: str, obj: str, receiver: str, verb: str) -> None:
        i = self._say(f"{giver} {verb} the {obj} to {receiver}.")
        self.holder[obj], self.got_at[obj] = receiver, i
        self.place_support[obj] = sorted({self.moved_at[receiver], i})
        self.gives.append((giver, obj, receiver, i))

    def options(self, kind: str) -> list[tuple[str, ...]]:
        """The argument tuples of all actions of `kind` allowed in the current state."""
        if kind == "move":
            return [(p, loc) for p in self.people for loc in LOCATIONS if loc != self.where.get(p)]
        if kind == "pickup":
            return [(p, o) for p in self.people if p in self.where for o in OBJECTS
                    if o not in self.holder and self.place.get(o, self.where[p]) == self.where[p]]
        if kind == "drop":
            return [(p, o) for o, p in self.holder.items()]
        if kind == "give":
            return [(p, o, q) for o, p in self.holder.items() for q in self.people
                    if q != p and self.where.get(q) == self.where[p]]
        raise ValueError(kind)


def _meeting_moves(world: _World, moves: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The moves that bring a person to a location where someone else is (qa5 makes gives likely)."""
    return [(p, loc) for p, loc in moves if any(world.where.get(q) == loc for q in world.people if q != p)]


def _step(world: _World, task: str, rng: np.random.Generator) -> None:
    """One random action: a feasible kind by ACTION_WEIGHTS, then uniform arguments and verb."""
    weights = ACTION_WEIGHTS[task]
    kinds = [k for k in weights if world.options(k)]
    p = np.array([weights[k] for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    opts = world.options(kind)
    if kind == "move" and task == "qa5" and rng.random() < 0.5:
        opts = _meeting_moves(world, opts) or opts
    args = opts[int(rng.integers(len(opts)))]
    verbs = {"move": MOVE_VERBS, "pickup": PICK_VERBS, "drop": DROP_VERBS, "give": GIVE_VERBS}[kind]
    verb = verbs[int(rng.integers(len(verbs)))]
    getattr(world, kind)(*args, verb)


# Question candidates: (question, answer, supporting fact indices).
Candidate = tuple[str, str, list[int]]


def _questions_qa1(world: _World) -> list[Candidate]:
    return [(f"Where is {p}?", loc, [world.moved_at[p]]) for p, loc in world.where.items()]


def _questions_qa2(world: _World) -> list[Candidate]:
    return [(f"Where is the {o}?", loc, world.place_support[o]) for o, loc in world.place.items()]


def _questions_qa3(world: _World) -> list[Candidate]:
    """'Where was o before l?' for each l that o entered exactly once, after another location."""
    out = []
    for obj, trail in world.trail.items():
        locs = [loc for loc, _ in trail]
        for i in range(1, len(trail)):
            if locs.count(locs[i]) == 1:
                support = sorted(set(trail[i - 1][1]) | set(trail[i][1]))
                out.append((f"Where was the {obj} before the {locs[i]}?", locs[i - 1], support))
    return out


def _questions_qa5(world: _World) -> list[Candidate]:
    """The four bAbI qa5 question forms about each give, kept where all matching gives agree.

    A give is a tuple (giver 0, object 1, receiver 2, fact 3); a question fixes some fields
    (`known`: field -> value) and asks for field `asked`."""
    def ask(question: str, known: dict[int, str], asked: int) -> Candidate | None:
        hits = [e for e in world.gives if all(e[k] == v for k, v in known.items())]
        answers = {e[asked] for e in hits}
        return (question, answers.pop(), [e[3] for e in hits]) if len(answers) == 1 else None

    out: dict[str, Candidate] = {}
    for g, o, r, _ in world.gives:
        for cand in (
            ask(f"Who gave the {o} to {r}?", {1: o, 2: r}, 0),
            ask(f"What did {g} give to {r}?", {0: g, 2: r}, 1),
            ask(f"Who did {g} give the {o} to?", {0: g, 1: o}, 2),
            ask(f"Who received the {o}?", {1: o}, 2),
        ):
            if cand is not None:
                out[cand[0]] = cand
    return list(out.values())


_QUESTIONS = {"qa1": _questions_qa1, "qa2": _questions_qa2, "qa3": _questions_qa3, "qa5": _questions_qa5}


def _world_story(task: str, rng: np.random.Generator, num_facts: int) -> BabiStory:
    """qa1/qa2/qa3/qa5: simulate `num_facts` actions, then ask one random well-defined question;
    a story with no such question is simulated again (at most _MAX_TRIES times)."""
    people = PEOPLE_QA5 if task == "qa5" else PEOPLE
    for _ in range(_MAX_TRIES):
        world = _World(people)
        for _ in range(num_facts):
            _step(world, task, rng)
        candidates = _QUESTIONS[task](world)
        if candidates:
            question, answer, support = candidates[int(rng.integers(len(candidates)))]
            return BabiStory(task, world.facts, question, answer, support)
    raise DataError(f"bAbI {task}: no story of {num_facts} facts with a well-defined question in "
                    f"{_MAX_TRIES} tries; use more facts")


def _qa4_story(rng: np.random.Generator, num_facts: int) -> BabiStory:
    """qa4: num_facts + 1 locations on a grid, each new one one step from a placed one (a random
    tree, one fact per edge, facts shuffled); one question about the pair of one fact, in one of
    four forms: 'What is d of y?' -> x, 'What is x d of?' -> y, and the same with opposite d."""
    names = [LOCATIONS[i] for i in rng.permutation(len(LOCATIONS))[: num_facts + 1]]
    pos = {names[0]: (0, 0)}
    edges = []  # (x, d, y): x is d of y
    for name in names[1:]:
        taken = set(pos.values())
        opts = [(y, d) for y in pos for d, (dx, dy) in DIRECTIONS.items()
                if (pos[y][0] + dx, pos[y][1] + dy) not in taken]
        y, d = opts[int(rng.integers(len(opts)))]
        pos[name] = (pos[y][0] + DIRECTIONS[d][0], pos[y][1] + DIRECTIONS[d][1])
        edges.append((name, d, y))
    edges = [edges[i] for i in rng.permutation(len(edges))]
    stated = [(x, d, y) if rng.random() < 0.5 else (y, OPPOSITE[d], x) for x, d, y in edges]
    facts = [f"The {x} is {d} of the {y}." for x, d, y in stated]
    k = int(rng.integers(len(stated)))
    x, d, y = stated[k]
    forms = [
        (f"What is {d} of the {y}?", x),
        (f"What is the {x} {d} of?", y),
        (f"What is {OPPOSITE[d]} of the {x}?", y),
        (f"What is the {y} {OPPOSITE[d]} of?", x),
    ]
    question, answer = forms[int(rng.integers(len(forms)))]
    return BabiStory("qa4", facts, question, answer, [k])


def babi_story(task: str, rng: np.random.Generator, num_facts: int | None = None) -> BabiStory:
    """A random bAbI-style story of `task` (module docstring) ending right before its question.

    num_facts: the number of facts; None draws it uniformly from DEFAULT_SIZES[task]
    (qa1 2-10, qa2 6-20, qa3 10-30, qa4 2, qa5 5-15). Deterministic given `rng`.
    """
    if task not in BABI_TASKS:
        raise DataError(f"unknown bAbI task '{task}'; choose one of {', '.join(BABI_TASKS)}")
    lo, hi = SIZE_LIMITS[task]
    if num_facts is None:
        num_facts = int(rng.integers(DEFAULT_SIZES[task][0], DEFAULT_SIZES[task][1] + 1))
    elif isinstance(num_facts, bool) or not isinstance(num_facts, (int, np.integer)) or not lo <= num_facts <= hi:
        raise DataError(f"bAbI {task} num_facts must be an integer in [{lo}, {hi}], got {num_facts!r}")
    if task == "qa4":
        return _qa4_story(rng, int(num_facts))
    return _world_story(task, rng, int(num_facts))
