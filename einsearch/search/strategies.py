"""Search strategies: what to try next, learned from what finished.

A strategy only proposes architectures and observes results; it knows nothing about execution
(inline or Ray) or storage.  `propose` returns a `Proposal`: a tree (or None: the Optuna sampler
derives one), its origin and its parent; `ask` turns it into an asked Optuna trial whose grammar
decisions (`einsearch.grammar.suggest`) derive the architecture (a proposed tree's decisions are
enqueued), so every strategy's trials are recorded the same way and `optuna-dashboard` shows them
all.

* `random`: independent samples from the space's PCFG.
* `evolution`: regularised evolution (Real et al. 2019): the population is the `population`
  most recent successful trials (age-based removal; with successive halving also those stopped
  at a rung, which lose a tournament to any that reached a higher rung); a child is a mutation of the winner of a
  tournament of `tournament` random members or, with probability `crossover`, the crossover of
  two winners.  The first children are the `--seed-arch` seeds and their mutations.  A child's
  `Proposal.parent` is the trial it was made from (a crossover's: the first winner, the tree the
  graft went into), so that it can start from that trial's weights (`--inherit`).
* `tpe`, `nsga2`: Optuna's samplers over the define-by-run encoding of the grammar.

Strategy state is a function of the finished trials, so a resumed run rebuilds it by replaying
`trials.jsonl` through `observe`.  The randomness of a proposal is a function of the run's seed
and the proposal's index (evolution, random), or of the seed and the trial's number (the Optuna
samplers, made afresh for each trial by `PerTrialSampler`), never of how many draws came before:
so a resumed strategy proposes what the uninterrupted one would have, instead of restarting its
random stream (which made a resumed TPE or NSGA-II repeat its first proposals).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import optuna
from optuna import Study
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from einsearch.arch import Arch
from einsearch.grammar import Space, crossover, mutate, parse, sample, to_params
from einsearch.search.record import TrialRecord


@dataclass(frozen=True)
class Proposal:
    arch: Arch | None  # None: let the Optuna sampler derive it
    origin: str
    parent: int | None = None  # the trial it was made from (whose weights it may inherit)


@dataclass(frozen=True)
class Member:
    """One of evolution's population: a trained trial's tree, its score and its number (for a
    reused duplicate, the number of the trial that trained it: the one with weights)."""

    arch: Arch
    score: float
    number: int
    rung: int = 0  # successive halving: the rung it reached (tournaments compare the rung first)


class Strategy:
    name = "base"

    def __init__(self, space: Space, seed: int):
        self.space, self.seed = space, seed
        self.proposed = 0  # proposals made (after `replay`: the finished trials)
        self.rng = np.random.default_rng([seed, 0])  # the current proposal's randomness

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        """The Optuna sampler of the study. Strategies that choose architectures themselves
        enqueue every decision, so the sampler never decides anything for them."""
        return optuna.samplers.RandomSampler(seed=seed)

    def propose(self) -> Proposal:
        """The next proposal, drawn from a generator seeded by the run's seed and its index."""
        self.rng = np.random.default_rng([self.seed, self.proposed])
        self.proposed += 1
        return self.choose()

    def choose(self) -> Proposal:
        """The proposal number `proposed` (counting from 1), drawing from `rng`."""
        raise NotImplementedError

    def ask(self, study: optuna.Study) -> tuple[optuna.Trial, str]:
        """An asked Optuna trial whose decisions encode the next architecture, and its origin; a
        proposal's parent goes into the trial's user attribute ``parent``."""
        proposal = self.propose()
        if proposal.arch is not None:
            study.enqueue_trial(to_params(proposal.arch, self.space))
        trial = study.ask()
        if proposal.parent is not None:
            trial.set_user_attr("parent", proposal.parent)
        return trial, proposal.origin

    def parents(self) -> set[int]:
        """Trials that later proposals may name as parent (their weights are worth keeping)."""
        return set()

    def observe(self, record: TrialRecord) -> None:
        """Learn from a finished trial (called in finishing order)."""

    def replay(self, records: list[TrialRecord]) -> None:
        """Rebuild the state of a resumed run from its finished trials."""
        for record in records:
            self.observe(record)
        self.proposed = len(records)  # a trial lost in flight is proposed again


class RandomSearch(Strategy):
    name = "random"

    def choose(self) -> Proposal:
        return Proposal(sample(self.space, self.rng), "sample")


class Evolution(Strategy):
    name = "evolution"

    def __init__(
        self,
        space: Space,
        seed: int,
        seeds: tuple[Arch, ...] = (),
        population: int = 16,
        tournament: int = 4,
        crossover: float = 0.2,
        maximize: bool = True,
    ):
        super().__init__(space, seed)
        self.seeds, self.size, self.tournament = seeds, population, tournament
        self.crossover_rate, self.maximize = crossover, maximize
        self.population: deque[Member] = deque(maxlen=population)

    def choose(self) -> Proposal:
        if self.proposed <= len(self.seeds):
            return Proposal(self.seeds[self.proposed - 1], "seed")
        if len(self.population) < min(self.size, 2):  # still filling: seeds' mutations, else samples
            if self.seeds:
                parent = self.seeds[int(self.rng.integers(len(self.seeds)))]
                trained = next((m.number for m in self.population if m.arch == parent), None)
                return Proposal(mutate(parent, self.space, self.rng), "mutation", trained)
            return Proposal(sample(self.space, self.rng), "sample")
        if self.rng.random() < self.crossover_rate:
            a, b = self._winner(), self._winner()
            return Proposal(crossover(a.arch, b.arch, self.space, self.rng), "crossover", a.number)
        winner = self._winner()
        return Proposal(mutate(winner.arch, self.space, self.rng), "mutation", winner.number)

    def _winner(self) -> Member:
        members = list(self.population)
        picks = self.rng.choice(len(members), size=min(self.tournament, len(members)), replace=False)
        sign = 1.0 if self.maximize else -1.0  # a higher rung wins; at equal rungs, the better score
        best = max(picks, key=lambda i: (members[i].rung, sign * members[i].score))
        return members[best]

    def observe(self, record: TrialRecord) -> None:
        if record.status in ("ok", "stopped") and record.objectives:  # stopped: scored at a lower rung
            number = record.number if record.reused_from is None else record.reused_from
            self.population.append(Member(parse(record.arch), record.objectives[0], number, record.rung or 0))

    def parents(self) -> set[int]:
        return {m.number for m in self.population}


class OptunaStrategy(Strategy):
    """TPE or NSGA-II: the study's sampler makes every grammar decision."""

    def __init__(self, space: Space, seed: int, kind: str, seeds: tuple[Arch, ...] = ()):
        super().__init__(space, seed)
        self.name, self.seeds = kind, seeds

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        if self.name == "nsga2":
            return PerTrialSampler(lambda s: optuna.samplers.NSGAIISampler(seed=s), seed)
        return PerTrialSampler(lambda s: optuna.samplers.TPESampler(seed=s), seed)

    def choose(self) -> Proposal:
        if self.proposed <= len(self.seeds):
            return Proposal(self.seeds[self.proposed - 1], "seed")
        return Proposal(None, "optuna")


class PerTrialSampler(optuna.samplers.BaseSampler):
    """An Optuna sampler made afresh for each trial, seeded by (seed, trial number).

    TPE and NSGA-II read everything they learn from the study's trials; their only state of their
    own is a random stream, which one sampler object for the whole run would restart when a run
    resumes.  Made per trial, a trial's draws depend only on the seed, its number and the trials
    before it, so a resumed study continues as the uninterrupted one would.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self.make, self.seed = make, seed
        self.live: dict[int, optuna.samplers.BaseSampler] = {}  # asked trial -> its sampler

    def _of(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number not in self.live:
            seed = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
            self.live[trial.number] = self.make(seed)
        return self.live[trial.number]

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._of(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial, space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._of(trial).sample_relative(study, trial, space)

    def sample_independent(self, study: Study, trial: FrozenTrial, name: str, distribution: BaseDistribution) -> Any:
        return self._of(trial).sample_independent(study, trial, name, distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._of(trial).before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: list[float] | None) -> None:
        self._of(trial).after_trial(study, trial, state, values)
        self.live.pop(trial.number, None)  # told: its sampler is done


STRATEGIES = ("random", "evolution", "tpe", "nsga2")


def make_strategy(name: str, space: Space, seed: int, seeds: tuple[Arch, ...], maximize: bool) -> Strategy:
    if name == "random":
        return RandomSearch(space, seed)
    if name == "evolution":
        return Evolution(space, seed, seeds=seeds, maximize=maximize)
    if name in ("tpe", "nsga2"):
        return OptunaStrategy(space, seed, name, seeds=seeds)
    raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
