"""The numbers behind the one-line report printed at the end of the suite (conftest.py)."""
from collections import Counter

counts: Counter[str] = Counter()   # containers, faults, bad inputs, escapes tried/blocked
leaked: int | None = None          # objects left on the host, set at the end of the session
