"""`python -m minicontainer.grade NN`, as the first edition's notes say: the grader
itself is course/grade.py (`make check EX=NN` runs it)."""
import sys

from .course.grade import main

if __name__ == "__main__":
    sys.exit(main())
