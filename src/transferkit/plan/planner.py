"""The choice of a recipe: candidates, what they are expected to reach, what they cost, a budget.

``choose`` is a pure function: ranked candidates (rank.py), measured costs (costs.py), optional
pilot measurements of fine-tuning, the data's size and the seconds left. It returns a ``Plan``:
the recipe to run, every alternative with its expected accuracy and predicted time, and the
reasons, which run.json and the report keep. Nothing here runs a model; ``budget.py`` executes.

Recipes, per ranked candidate (backbone x size):

- **head only** with the candidate's best one-pass head (linear, k-NN or nearest class mean):
  expected accuracy = its held-out accuracy on the sample; cost = the backbone once per image
  at the measured engine speed, then epochs on the cached features.
- **fine-tune the last block(s)** (``--freeze K``, cached at K), for a candidate a pilot measured:
  expected accuracy = its linear head's held-out accuracy + the gain the pilot saw over the linear
  head on the same sample (no extrapolation to more data: conservative); cost = the front once
  per image (and per mirrored training image with ``--augment flip``), then as many epochs as fit
  (at most ``MAX_EPOCHS``, at least ``MIN_EPOCHS``) at the measured training speed.

The winner has the highest expected accuracy among the recipes whose predicted time fits (ties:
the quicker). A candidate a pilot did not measure is never fine-tuned: no gain is assumed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from transferkit.core.errors import UserError
from transferkit.plan import costs

MAX_EPOCHS = 10
MIN_EPOCHS = 2
HEAD_EPOCHS = 10        # a linear head on cached features: 10 epochs cost seconds
SAFETY = 1.10           # predicted times are multiplied by this before they are compared with the time left


@dataclass
class Recipe:
    model: str
    size: int
    freeze: str                    # "backbone" or the number of frozen stages
    head: str
    epochs: int
    augment: str = "none"
    tta: str = "none"
    expected: float = 0.0          # expected top-1 (on the held-out sample)
    seconds: float = 0.0           # predicted time of the whole run
    why: str = ""

    @property
    def name(self) -> str:
        what = "head only" if self.freeze == "backbone" else f"--freeze {self.freeze}"
        extra = f", --augment {self.augment}" if self.augment != "none" else ""
        return f"{self.model}@{self.size} {what} --head {self.head} {self.epochs} epochs{extra}"

    def settings(self) -> dict:
        """The train flags of this recipe."""
        return {"model": self.model, "image_size": self.size, "freeze": self.freeze, "head": self.head,
                "epochs": self.epochs, "augment": self.augment}


@dataclass
class Plan:
    chosen: Recipe
    alternatives: list             # every Recipe considered, the chosen one included, best expected first
    reasons: list                  # sentences: why the winner won, what did not fit
    budget: float                  # seconds of the whole command
    spent: float                   # seconds already spent (ranking, pilots) when the plan was made
    measured: dict = field(default_factory=dict)  # filled after the run: accuracy, seconds

    def to_json(self) -> dict:
        return {"chosen": asdict(self.chosen), "alternatives": [asdict(r) for r in self.alternatives],
                "reasons": self.reasons, "budget_s": round(self.budget, 1), "spent_before_training_s": round(self.spent, 1),
                "measured": self.measured}


@dataclass
class Sizes:
    train: int
    val: int
    test: int

    @property
    def all(self) -> int:
        return self.train + self.val + self.test


def head_recipes(rows, sizes: Sizes, fixed: costs.Fixed) -> list[Recipe]:
    out = []
    for r in rows:
        epochs = 1 if r.head != "linear" else HEAD_EPOCHS  # k-NN and prototype: one pass, no epochs
        seconds = costs.head_only_seconds(sizes.all, sizes.train, epochs, r.engine_rate, fixed)
        out.append(Recipe(r.model, r.size, "backbone", r.head, epochs, expected=r.expected, seconds=seconds,
                          why=f"held-out accuracy of --head {r.head} on the sample"))
    return out


def finetune_recipes(rows, pilots: dict, sizes: Sizes, fixed: costs.Fixed, left: float, flip: bool,
                     robust: float = 0.0) -> list[Recipe]:
    """``pilots``: ``{(model, size, cut): {"clean": gain, "robust": gain}}`` over the linear head, measured
    on the sample (``robust``: under corruptions; blended with weight ``robust`` as rank does)."""
    out = []
    for r in rows:
        for cut, back_rate in sorted(r.train_rates.items(), reverse=True):
            gains = pilots.get((r.model, r.size, cut))
            if gains is None:
                continue
            clean = min(1.0, r.heads["linear"] + gains["clean"])  # an accuracy: 96% + a 5-point gain is not 101%
            expected, why = clean, f"linear head {r.heads['linear']:.2%} + the pilot's gain {gains['clean']:+.2%}"
            if robust and "robust" in gains and "linear" in r.robust:
                shifted = min(1.0, r.robust["linear"] + gains["robust"])
                expected = (1 - robust) * clean + robust * shifted
                why += f"; under corruptions {r.robust['linear']:.2%} {gains['robust']:+.2%}, weight {robust:g}"
            views = 2 if flip else 1
            per_epoch = costs.partial_seconds(sizes.all, sizes.train, sizes.val, 1, r.engine_rate, back_rate, views,
                                              fixed) - costs.partial_seconds(sizes.all, sizes.train, sizes.val, 0,
                                                                             r.engine_rate, back_rate, views, fixed)
            base = costs.partial_seconds(sizes.all, sizes.train, sizes.val, 0, r.engine_rate, back_rate, views, fixed)
            epochs = int(min(MAX_EPOCHS, (left / SAFETY - base) // max(per_epoch, 1e-9)))
            epochs = max(epochs, MIN_EPOCHS)
            out.append(Recipe(r.model, r.size, str(cut), "linear", epochs, "flip" if flip else "none",
                              expected=expected, seconds=base + epochs * per_epoch, why=why))
    return out


def choose(rows, sizes: Sizes, left: float, budget: float, spent: float, fixed: costs.Fixed | None = None,
           pilots: dict | None = None, flip: bool = True, robust: float = 0.0) -> Plan:
    """The recipe with the highest expected accuracy that fits in ``left`` seconds."""
    fixed = fixed or costs.Fixed()
    recipes = head_recipes(rows, sizes, fixed) + finetune_recipes(rows, pilots or {}, sizes, fixed, left, flip, robust)
    recipes.sort(key=lambda r: (-r.expected, r.seconds))
    fits = [r for r in recipes if r.seconds * SAFETY <= left]
    if not fits:
        cheapest = min(recipes, key=lambda r: r.seconds)
        need = spent + cheapest.seconds * SAFETY
        raise UserError(f"a budget of {format_seconds(budget)} is too small for any recipe: the cheapest "
                        f"({cheapest.name}) needs about {format_seconds(cheapest.seconds * SAFETY)} after "
                        f"{format_seconds(spent)} of ranking; give --budget {format_seconds(need * 1.1, ceil=True)} or more")
    chosen = fits[0]
    reasons = [f"chosen: {chosen.name}: expected {chosen.expected:.2%} ({chosen.why}), predicted "
               f"{format_seconds(chosen.seconds)} of the {format_seconds(left)} left"]
    better = [r for r in recipes if r.expected > chosen.expected]
    for r in better[:3]:
        reasons.append(f"not {r.name}: expected {r.expected:.2%} but predicted {format_seconds(r.seconds)}, "
                       f"more than the {format_seconds(left)} left")
    runner_up = next((r for r in fits if r is not chosen), None)
    if runner_up:
        reasons.append(f"next best that fits: {runner_up.name}: expected {runner_up.expected:.2%}, "
                       f"predicted {format_seconds(runner_up.seconds)}")
    return Plan(chosen, recipes, reasons, budget, spent)


def format_seconds(seconds: float, ceil: bool = False) -> str:
    import math

    s = math.ceil(seconds) if ceil else round(seconds)
    if s < 600:
        return f"{s}s"
    minutes = math.ceil(s / 60) if ceil else s / 60
    return f"{minutes:.0f}m" if ceil else f"{minutes:.1f}m"
