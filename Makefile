# Shortcuts for the scripts; nothing here is needed to build the module
# (see README.md, "Try it").
#
#   make deb                the Debian package, .build/deb/*.deb (build/deb.sh)
#   make seed-report        the seed article's scenarios, compressed, and llm_hedge's
#   make seed-report-full   the same at their real length (about 50 minutes)
#   make demo, make test    scripts/demo.sh, scripts/test.sh
#
# SEED_ARGS passes more options to tools/seed-report, e.g.
#   make seed-report SEED_ARGS="--scenarios 1,3"

NGINX_VERSION ?= 1.22
SEED_ARGS ?=

.PHONY: help deb seed-report seed-report-full demo test

# "make" alone runs nothing long
help:
	@sed -n 's/^#   make /make /p' Makefile

deb:
	sh build/deb.sh --lintian

seed-report:
	sh build/deps.sh && env=$$(sh build/nginx.sh $(NGINX_VERSION)) && \
	. "$$env" && \
	python3 tools/seed-report --speed 10 --hedging 60 \
	    --out .build/seed-report $(SEED_ARGS)

seed-report-full:
	sh build/deps.sh && env=$$(sh build/nginx.sh $(NGINX_VERSION)) && \
	. "$$env" && \
	python3 tools/seed-report --speed 1 --hedging 300 \
	    --out .build/seed-report-full $(SEED_ARGS)

demo:
	./scripts/demo.sh

test:
	./scripts/test.sh
