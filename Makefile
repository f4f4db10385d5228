# Everything a newcomer needs: `make run` (demo lake + main job) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-lake
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export APERIO_CONFIG ?= $(CURDIR)/$(DEMO_DIR)/aperio.yaml

.PHONY: install run test dev lint demo clean

# The stamp file makes `make run`/`make test` install only when the project's requirements changed.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $@

install: $(VENV)/.installed

$(DEMO_DIR)/aperio.yaml: | $(VENV)/.installed
	$(BIN)/aperio demo $(DEMO_DIR) --with-legacy

demo: $(DEMO_DIR)/aperio.yaml

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

# The main job, as Dagster runs on the instance in $(DAGSTER_HOME): migrate the demo's legacy state
# (Dagster CLI), then the refresh: every batch registered as a partition and converted and marked
# in batch runs, two at a time, then aperio_catalog_job (models, views, state checks); then show the
# state and query the catalog.
DAGSTER_JOB := PYTHONWARNINGS=ignore $(BIN)/dagster job execute -m aperio_assets.definitions -c run-config.yaml
run: $(VENV)/.installed $(DEMO_DIR)/aperio.yaml $(DAGSTER_HOME)/dagster.yaml
	$(DAGSTER_JOB) -j migrate_legacy_state_job
	PYTHONWARNINGS=ignore $(BIN)/python -m aperio_assets.defs.launch --workers 2
	$(BIN)/aperio --config $(APERIO_CONFIG) status
	$(BIN)/aperio --config $(APERIO_CONFIG) sql "SELECT a.name AS airline, count(*) AS flights, \
	  round(avg(f.dep_delay), 1) AS avg_dep_delay FROM flights.flights f JOIN reference.airlines a USING (carrier) \
	  GROUP BY 1 ORDER BY 2 DESC LIMIT 5"

# pytest-xdist: a worker per core and one more (the deployment test mostly waits on sensor ticks), each
# taking the next test when free, the slow ones first (aperio_tests/conftest.py). An -n in PYTEST_ARGS
# wins: PYTEST_ARGS="-n 0" runs the suite in one process. The 25 slowest tests are listed at the end.
# The project's bytecode is compiled first: where PYTHONDONTWRITEBYTECODE is set (these machines),
# every process the suite starts (launchers, the daemon, run workers) would compile it again (~0.3 s).
test: $(VENV)/.installed
	$(BIN)/python -m compileall -q aperio_assets aperio_tests
	$(BIN)/python -m pytest -n $$(( $$(nproc) + 1 )) --dist load --maxschedchunk 1 --durations=25 $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

dev: $(VENV)/.installed $(DEMO_DIR)/aperio.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

clean:
	rm -rf $(VENV) $(DEMO_DIR) .dagster_home .pytest_cache
