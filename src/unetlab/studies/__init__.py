"""Studies: a base config, named variants and seeds; every variant x seed is a cell, a normal run folder.

    unetlab study q52-skips --data data/tgs-salt          # one worker; start more for more cells at once
    unetlab study q52-skips --status                     # cells done / running / left
    unetlab study q52-skips --report                     # the report of what is finished

`spec.py` reads and checks study files, `folder.py` owns the study folder's layout, `coordination.py`
the Optuna storage that hands cells to workers, `runner.py` runs them, `sharing.py` copies a cell another study already ran identically,
`report.py` reports on them.
"""

from unetlab.studies.folder import StudyFolder
from unetlab.studies.runner import build_study_report, run_study, study_status
from unetlab.studies.spec import StudySpec, load_study, study_description, study_names

__all__ = ["StudyFolder", "StudySpec", "build_study_report", "load_study", "run_study", "study_description",
           "study_names", "study_status"]
