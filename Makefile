# One entry point for everything: `make test` on a fresh clone sets up and runs every check,
# `make dev` runs the whole pipeline locally.
SHELL := /bin/bash
VENV  ?= .venv-tools
PY    ?= python3
TOOLS := 'moto[server]==5.2.5' 'aws-sam-cli==1.170.0' 'cargo-lambda==1.9.2'
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export SAM_CLI_TELEMETRY := 0
CARGO ?= cargo

.PHONY: test tools fmt-check clippy unit sam-lint build build-arm64 lambda-check dev doctor admin deploy bench soak fuzz clean

## test: every check (format, lint, unit, integration against moto + local fakes, SAM lint, Lambda build)
test: tools fmt-check clippy sam-lint unit lambda-check

$(VENV)/.installed:
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TOOLS)
	touch $@

## tools: local virtualenv with moto, aws-sam-cli (cfn-lint, sam-translator) and cargo-lambda (+zig)
tools: $(VENV)/.installed

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit: tools
	$(CARGO) build --workspace --bins --locked
	scripts/with-moto.sh $(CARGO) test --workspace --locked

sam-lint: tools
	sam validate --lint
	sam validate --region us-east-1
	mkdir -p target
	python scripts/sam_translate.py template.yaml target/cfn.json
	cfn-lint target/cfn.json

## build: x86_64 Lambda zips into target/lambda-x86_64/<bin>/bootstrap.zip (works offline)
FUNCTIONS := -p intake -p worker -p reconciler

build: tools
	$(CARGO) lambda build --release --locked $(FUNCTIONS) --lambda-dir target/lambda-x86_64 --output-format zip

## build-arm64: arm64 zips (needs the aarch64 rust-std, fetched by rustup)
build-arm64: tools
	rustup target add aarch64-unknown-linux-gnu
	$(CARGO) lambda build --release --arm64 --locked $(FUNCTIONS) --lambda-dir target/lambda-arm64 --output-format zip

## lambda-check: the Lambda zips build for the deployment target (cargo-lambda with zig, x86_64,
## the glibc of provided.al2023), unoptimised so that every test run does not pay for a release
## build; `make build` makes the optimised zips that are deployed.
lambda-check: tools
	$(CARGO) lambda build --locked $(FUNCTIONS) --lambda-dir target/lambda-check --output-format zip
	@for b in sv-intake sv-worker sv-reconciler; do \
	  test -s target/lambda-check/$$b/bootstrap.zip || { echo "missing zip for $$b"; exit 1; }; \
	  ls -l target/lambda-check/$$b/bootstrap.zip; \
	done

## dev: run the whole pipeline locally (moto, local GHL, local SproutVideo, intake, worker, reconciler)
dev: tools
	scripts/dev.sh

## doctor: read-only check of a setup (the deployment's environment, else the running `make dev`);
## CAPTURE=dir saves the answers it read, redacted
doctor:
	scripts/doctor.sh

## admin: manage the tenants (ARGS="tenant list"; the deployment's environment, else `make dev`'s stack)
admin:
	scripts/sv-admin.sh $(ARGS)

## deploy: sam build + sam deploy (guided the first time)
deploy: tools
	sam build
	if [ -f samconfig.toml ]; then sam deploy; else sam deploy --guided; fi

## bench: the performance table (target/bench/results.json); release builds, moto and the local fakes
bench: tools build
	$(CARGO) lambda build --release --locked -p sync-tests --bin hello-lambda --lambda-dir target/lambda-bench --output-format zip
	$(CARGO) build --release --locked -p sync-tests --bin sv-bench
	scripts/with-moto.sh target/release/sv-bench

## soak: the chaos soak at length (a short one runs in `make test`)
soak: tools
	$(CARGO) build --workspace --bins --locked
	SOAK_PEOPLE=$${SOAK_PEOPLE:-150} SOAK_SECS=$${SOAK_SECS:-600} scripts/with-moto.sh \
	  $(CARGO) test --locked -p sync-tests --test soak -- --nocapture

## fuzz: long property runs over event decoding, signature checks, command decoding and the router (bounded)
fuzz: tools
	PROPTEST_CASES=$${FUZZ_CASES:-20000} FUZZ_CASES=$${FUZZ_CASES:-20000} timeout $${FUZZ_SECS:-900} \
	  scripts/with-moto.sh $(CARGO) test --locked -p shared -p sync-tests -- fuzz arbitrary decode_never_panics

clean:
	rm -rf target .aws-sam
