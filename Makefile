# minicontainer: every target installs what it needs first (as root).
PY := .venv/bin/python

.PHONY: setup lab test test-oci test-cgroup-v2 image test-image check html slides figures compare bench doctor clean

setup:
	@MAKE_TARGET=$(or $(MAKECMDGOALS),setup) bash scripts/setup.sh

lab: setup
	$(PY) -m jupyter lab --allow-root --ip=127.0.0.1 --no-browser --notebook-dir=notebooks

# The runtime-tools suite (about 3 minutes, and a minute to build it) is make test-oci's.
test:
	@MAKE_TARGET=test bash scripts/setup.sh test
	$(PY) -m pytest --ignore=tests/test_oci_validation.py

# minicontainer as an OCI runtime, checked against runc and crun (make test runs these
# tests too), and the opencontainers/runtime-tools validation suite under runc and under
# minicontainer, built offline from third_party/runtime-tools (-rP: the tables printed).
test-oci:
	@MAKE_TARGET=test-oci bash scripts/setup.sh oci
	$(PY) -m pytest -rP tests/test_oci.py tests/test_oci_conformance.py \
	  tests/test_oci_validation.py

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
	MINICONTAINER_TEST_IMAGE=1 $(PY) -m pytest -p no:nbmake -o addopts= -ra --timeout=1200 \
	  -o faulthandler_timeout=600 \
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
	$(PY) bench/cost.py

doctor: setup
	$(PY) -m minicontainer doctor

clean:
	-[ -x $(PY) ] && $(PY) -m minicontainer cleanup --all
	rm -rf .venv results build /var/cache/minicontainer
