# minicontainer: every target installs what it needs first (as root).
PY := .venv/bin/python

.PHONY: setup lab test test-oci test-cgroup-v2 image test-image check html slides figures compare bench doctor clean

setup:
	@MAKE_TARGET=$(or $(MAKECMDGOALS),setup) bash scripts/setup.sh

lab: setup
	$(PY) -m jupyter lab --allow-root --ip=127.0.0.1 --no-browser --notebook-dir=notebooks

test:
	@MAKE_TARGET=test bash scripts/setup.sh test
	$(PY) -m pytest

# minicontainer as an OCI runtime, checked against runc and crun (make test runs these
# tests too). With RUNTIME_TOOLS=DIR, a checkout of opencontainers/runtime-tools (not in
# Debian: see bench/oci_validation.py), its validation suite too, built here with Go.
test-oci:
	@MAKE_TARGET=test-oci bash scripts/setup.sh oci
	$(PY) -m pytest tests/test_oci.py tests/test_oci_conformance.py
ifdef RUNTIME_TOOLS
	[ -x $(RUNTIME_TOOLS)/runtimetest ] || (cd $(RUNTIME_TOOLS) && \
	  export GOFLAGS=-mod=vendor GOPROXY=off && make runtimetest tool && \
	  make -j2 validation-executables)
	$(PY) bench/oci_validation.py --suite $(RUNTIME_TOOLS)
endif

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
	$(PY) bench/cost.py

doctor: setup
	$(PY) -m minicontainer doctor

clean:
	-[ -x $(PY) ] && $(PY) -m minicontainer cleanup --all
	rm -rf .venv results build /var/cache/minicontainer
