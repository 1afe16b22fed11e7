"""The search: strategies (what to try), the driver and run folder (what happened), executors
(where it runs: inline or Ray Tune), and the finalists that settle what it found."""

from einsearch.search.config import Execution, RunConfig, parse_duration
from einsearch.search.record import RunFolder, TrialRecord
from einsearch.search.run import Search, new_run_folder
from einsearch.search.session import Outcome, final, resume, start

__all__ = ["Execution", "Outcome", "RunConfig", "RunFolder", "Search", "TrialRecord", "final", "new_run_folder", "parse_duration", "resume", "start"]
