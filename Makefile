# minicontainer: every target installs what it needs first (as root).
PY := .venv/bin/python

.PHONY: setup lab test test-cgroup-v2 image test-image check html slides figures compare bench doctor clean

setup:
	@MAKE_TARGET=$(or $(MAKECMDGOALS),setup) bash scripts/setup.sh

lab: setup
	$(PY) -m jupyter lab --allow-root --ip=127.0.0.1 --no-browser --notebook-dir=notebooks

test:
	@MAKE_TARGET=test bash scripts/setup.sh test
	$(PY) -m pytest

test-cgroup-v2: setup
	$(PY) -m pytest -s tests/test_cgroup_v2.py

# The course as an image (docs/classroom-at-scale.md): Debian from Debian's packages, the
# Python dependencies, the VM kernel, the course; only changed layers are rebuilt.
image:
	@MAKE_TARGET=image bash scripts/setup.sh image
	$(PY) -m minicontainer.course.labimage

# The image run under runc (umoci's bundle) and under minicontainer, notebooks 00-02
# executed inside, pushed with skopeo and pulled back: about 2 minutes after the build.
test-image: image
	MINICONTAINER_TEST_IMAGE=1 $(PY) -m pytest -p no:nbmake -o addopts= -ra --timeout=3600 \
	  tests/test_labimage.py tests/test_deploy.py

check: setup
	$(PY) -m minicontainer.course.grade $(EX)

html: setup
	MINICONTAINER_EXERCISES=$(CURDIR)/solutions $(PY) -m jupyter nbconvert --execute \
	  --to html --output-dir build/html notebooks/*.ipynb

# The notebooks as reveal.js slides that work offline (reveal.js: a pinned local copy).
slides:
	@MAKE_TARGET=slides bash scripts/setup.sh slides
	$(PY) -m minicontainer.course.slides --output-dir build/slides notebooks/*.ipynb

# The instructor pack's figures, drawn by code (minicontainer/course/plots.py).
figures: setup
	$(PY) -m minicontainer.course.plots docs

compare: setup
	$(PY) -m minicontainer compare $(if $(QUICK),--quick)

bench:
	@MAKE_TARGET=bench bash scripts/setup.sh bench
	$(PY) bench/start_time.py
	$(PY) bench/load.py
	$(PY) bench/images.py

doctor: setup
	$(PY) -m minicontainer doctor

clean:
	-[ -x $(PY) ] && $(PY) -m minicontainer cleanup --all
	rm -rf .venv results build /var/cache/minicontainer
