"""`StrategyContract`: the tests every search strategy inherits (as Optuna's samplers inherit
``optuna.testing``'s sampler tests, and the primitives `tests/contract.py`'s `PrimitiveContract`).

A test class sets `strategy` (a name `make_strategy` knows) and, where needed, its seed
architectures and the number of proposals.  The contract drives the strategy the way
`Search` does, one trial at a time and without training: `ask` a trial from an Optuna study,
`suggest` the architecture from its decisions, tell the study and `observe` a made-up result
(every third trial fails, the rest score by their id), and checks that

* every proposal is a member of the space, and a proposed tree (origin, parent) is what its
  trial derives (records);
* the same seed gives the same proposals (and another seed others);
* a strategy resumed after some finished trials (a fresh strategy and sampler, the same study,
  `replay` of the records) proposes what the uninterrupted strategy would have;
* failed and rejected trials are accepted (observed, told), never become parents, and the
  strategy keeps proposing members after them.
"""

from __future__ import annotations

import optuna

from einsearch.arch import Arch
from einsearch.grammar import load_space, parse, suggest
from einsearch.search.record import TrialRecord
from einsearch.search.strategies import Strategy, make_strategy
from tests.search.conftest import TINY_SPACE

optuna.logging.set_verbosity(optuna.logging.WARNING)


class StrategyContract:
    strategy: str
    space: str = TINY_SPACE
    seed_archs: tuple[str, ...] = ()
    proposals: int = 10  # per drive; the resume test interrupts after `resume_after` of them
    resume_after: int = 6
    maximize: bool = True

    # ------------------------------------------------------------------ driving
    def make(self, seed: int = 0) -> Strategy:
        seeds = tuple(parse(text) for text in self.seed_archs)
        return make_strategy(self.strategy, load_space(self.space), seed, seeds, self.maximize)

    def study(self, strategy: Strategy, seed: int, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
        """The run's study (a new one, or the one in `storage`, reopened with a fresh sampler as a
        resumed run reopens it)."""
        return optuna.create_study(
            storage=storage or optuna.storages.InMemoryStorage(),
            sampler=strategy.sampler(seed),
            study_name="contract",
            direction="maximize" if self.maximize else "minimize",
            load_if_exists=True,
        )

    def result(self, number: int, arch: Arch) -> tuple[str, tuple[float, ...] | None]:
        """A made-up outcome, a function of the trial: every third fails, the rest score by id."""
        if number % 3 == 2:
            return "failed", None
        return "ok", (int(arch.id, 16) % 1000 / 1000,)

    def drive(self, strategy: Strategy, study: optuna.Study, count: int) -> list[TrialRecord]:
        """`count` trials as `Search` runs them one at a time: ask, derive, tell, observe."""
        space = strategy.space
        records = []
        propose, proposals = strategy.propose, []
        strategy.propose = lambda: proposals.append(propose()) or proposals[-1]  # watch what ask proposes
        for _ in range(count):
            trial, origin = strategy.ask(study)
            arch = suggest(trial, space)
            proposal = proposals[-1]
            assert proposal.arch is None or arch == proposal.arch, "the trial must derive the proposed tree"
            assert origin == proposal.origin and trial.user_attrs.get("parent") == proposal.parent
            status, objectives = self.result(trial.number, arch)
            if status == "ok":
                study.tell(trial, list(objectives))
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            record = TrialRecord(
                number=trial.number, arch=arch.text, id=arch.id, status=status,
                reason=None if status == "ok" else "contract: made-up failure", objectives=objectives,
                origin=origin, parent=trial.user_attrs.get("parent"),
            )  # fmt: skip
            strategy.observe(record)
            records.append(record)
        del strategy.propose
        return records

    def run(self, seed: int = 0, count: int | None = None) -> list[TrialRecord]:
        strategy = self.make(seed)
        return self.drive(strategy, self.study(strategy, seed), self.proposals if count is None else count)

    # ------------------------------------------------------------------ the contract
    def test_proposals_are_members_of_the_space(self):
        space = load_space(self.space)
        records = self.run()  # `drive` checks that each trial derives the tree its strategy proposed
        assert len(records) == self.proposals
        for record in records:
            arch = parse(record.arch)
            assert space.contains(arch), f"{record.arch}: {space.explain(arch)}"
            assert record.origin
            assert record.parent is None or record.parent < record.number
        assert [r.arch for r in records[: len(self.seed_archs)]] == [parse(t).text for t in self.seed_archs]

    def test_the_same_seed_gives_the_same_proposals(self):
        first, again, other = self.run(0), self.run(0), self.run(1)
        assert [(r.arch, r.origin, r.parent) for r in first] == [(r.arch, r.origin, r.parent) for r in again]
        assert [r.arch for r in first] != [r.arch for r in other]

    def test_a_resumed_strategy_proposes_what_the_uninterrupted_one_would(self):
        uninterrupted = self.run(0)
        storage = optuna.storages.InMemoryStorage()
        before = self.make(0)
        done = self.drive(before, self.study(before, 0, storage), self.resume_after)
        resumed = self.make(0)  # a new session: fresh strategy and sampler, the same study
        resumed.replay(done)
        after = self.drive(resumed, self.study(resumed, 0, storage), self.proposals - self.resume_after)
        assert [r.arch for r in done + after] == [r.arch for r in uninterrupted]
        rest = uninterrupted[self.resume_after :]
        assert [(r.origin, r.parent) for r in after] == [(r.origin, r.parent) for r in rest]

    def test_failed_and_rejected_trials_are_accepted_and_never_parents(self):
        strategy = self.make()
        study = self.study(strategy, 0)
        records = self.drive(strategy, study, self.proposals)
        failed = {r.number for r in records if r.status == "failed"}
        assert failed
        trial, origin = strategy.ask(study)  # a proposal a constraint rejects: told as failed, observed
        arch = suggest(trial, strategy.space)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        rejected = TrialRecord(trial.number, arch.text, arch.id, "rejected", "over --max-params", None, origin=origin)
        strategy.observe(rejected)
        failed.add(trial.number)
        assert not strategy.parents() & failed
        assert all(r.parent not in failed for r in records)
        for record in self.drive(strategy, study, 3):
            assert strategy.space.contains(parse(record.arch))
            assert record.parent not in failed
