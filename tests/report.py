"""The numbers behind the one-line report printed at the end of the suite (conftest.py)."""
from collections import Counter

counts: Counter[str] = Counter()   # containers, faults, bad inputs, escapes tried/blocked
leaked: int | None = None          # objects left on the host, set at the end of the session
# each notebook's cells, seconds, on their first run in one kernel (test_course_reruns.py)
course: dict[str, list[float]] = {}
