# SecureStreams: one binary, `securestreams`, and its tests.
#   make demo       install dependencies, build, run the delayed-flights pipeline (encrypted)
#   make check      install dependencies; every test on the normal build, then the unit
#                   tests and the fast tier built with ASan and UBSan (build-asan), then
#                   each fuzz target briefly; one closing line "N passed, M failed" for
#                   all three (what CI runs)
#   make fuzz       build the libFuzzer targets (build-fuzz), run each FUZZ_SECONDS
#   make            build build/securestreams
#   make test       build and run every test (unit, Lua and integration)
#   make test-fast  build and run the fast tier: unit, Lua and the quick integration tests
#   make asan       build with ASan and UBSan into build-asan and run every test there
#   make install PREFIX=DIR
PREFIX ?= /usr/local
BUILD  ?= build
PKGS    = libzmq libsodium libcrypto lua5.4 msgpack libseccomp libcjson
CC     ?= cc
CFLAGS ?= -O2 -g
WARN    = -Wall -Wextra -Wshadow -Wundef -Wwrite-strings -Wmissing-prototypes \
          -Wstrict-prototypes -Wno-unused-parameter \
          -Wno-missing-field-initializers
BASE_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) $(shell pkg-config --cflags $(PKGS))
# The library (lib/) sees only its own headers, so it cannot include a
# command's; the commands (src/) and the tests see both.
LIB_CFLAGS = $(BASE_CFLAGS) -Ilib
ALL_CFLAGS = $(BASE_CFLAGS) -Ilib -Isrc
LIBS    = $(shell pkg-config --libs $(PKGS)) -lm -lpthread

LIB_SRCS = $(wildcard lib/*/*.c)
CMD_SRCS = $(wildcard src/*.c)
LUA_SRCS = $(wildcard lib/lua/*.lua)
LIB_OBJS = $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRCS)) $(BUILD)/luasrc.o
CMD_OBJS = $(patsubst %.c,$(BUILD)/%.o,$(CMD_SRCS))
OBJS     = $(LIB_OBJS) $(CMD_OBJS)
LIBSS    = $(BUILD)/libsecurestreams.a
# The tests link the library and every command but main (a test may run a
# command in-process, as test_enclave runs the enclave child).
TEST_OBJS = $(filter-out $(BUILD)/src/main.o,$(CMD_OBJS)) $(LIBSS)
TESTS    = $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
# Attackers' programs the integration tests run (tests/attack/*.c): each
# links the library alone, as an outsider using the wire format would.
ATTACKS  = $(patsubst tests/attack/%.c,$(BUILD)/attack/%,$(wildcard tests/attack/*.c))

.PHONY: all test test-fast unit asan install clean deps demo check bench sgx fuzz fuzz-build
ROWS     ?= 1000000
SECURITY ?= enclave
WORKERS  ?= 2
all: $(BUILD)/securestreams

$(BUILD)/securestreams: $(CMD_OBJS) $(LIBSS)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LIBS)

$(LIBSS): $(LIB_OBJS)
	rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/lib/%.o: lib/%.c
	@mkdir -p $(dir $@)
	$(CC) $(LIB_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/src/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/embed: tools/embed.c
	@mkdir -p $(BUILD)
	$(CC) -O1 -o $@ $<

$(BUILD)/luasrc.c: $(BUILD)/embed $(LUA_SRCS)
	$(BUILD)/embed $@ $(foreach f,$(LUA_SRCS),$(basename $(notdir $(f)))=$(f))

$(BUILD)/luasrc.o: $(BUILD)/luasrc.c
	$(CC) $(LIB_CFLAGS) -c -o $@ $<

# Every test binary links the shared helpers of tests/test.c (tests/test.h).
$(BUILD)/tests/test.o: tests/test.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: tests/%.c $(BUILD)/tests/test.o $(TEST_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -o $@ $< $(BUILD)/tests/test.o $(TEST_OBJS) $(LIBS) -lcmocka

$(BUILD)/attack/%: tests/attack/%.c $(LIBSS)
	@mkdir -p $(dir $@)
	$(CC) $(LIB_CFLAGS) -MMD -MP -o $@ $< $(LIBSS) $(LIBS)

$(BUILD)/memscan: tools/memscan.c
	@mkdir -p $(BUILD)
	$(CC) -O2 -o $@ $<

unit: $(TESTS) $(ATTACKS)
test: all $(TESTS) $(ATTACKS) $(BUILD)/memscan
	tests/run.sh $(BUILD)

test-fast: all $(TESTS) $(ATTACKS) $(BUILD)/memscan
	tests/run.sh --tier fast $(BUILD)

# The sanitizer build: its own directory, every object built with the flags.
# tests/run.sh --sanitized halts UBSan at its first report and fails a test
# on any report of either sanitizer, whichever of its processes made it.
SAN_BUILD  = build-asan
SAN_CFLAGS = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer
# check's sub-makes build in parallel, unless make was given -j already.
CHECK_JOBS = $(if $(findstring -j,$(MAKEFLAGS)),,-j$(shell nproc))

asan:
	$(MAKE) BUILD=$(SAN_BUILD) CFLAGS="$(SAN_CFLAGS)" all unit $(SAN_BUILD)/memscan
	tests/run.sh --sanitized $(SAN_BUILD)

# Fuzzing with libFuzzer (clang): each fuzz/fuzz_*.c feeds untrusted bytes to
# one parser of the library, built with coverage and both sanitizers in
# build-fuzz. `make fuzz` runs every target FUZZ_SECONDS from its corpus
# (fuzz/corpus/NAME) and replays fuzz/regressions/NAME (scripts/fuzz).
FUZZ_BUILD   = build-fuzz
FUZZ_CC      = clang-14
FUZZ_CFLAGS  = -O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = $(patsubst fuzz/%.c,$(FUZZ_BUILD)/fuzz/%,$(wildcard fuzz/fuzz_*.c))

$(BUILD)/fuzz/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz.c fuzz/fuzz.h $(LIBSS)
	@mkdir -p $(dir $@)
	$(CC) $(LIB_CFLAGS) -Ifuzz -fsanitize=fuzzer -o $@ $< fuzz/fuzz.c $(LIBSS) $(LIBS)

fuzz-build: deps
	$(MAKE) $(CHECK_JOBS) BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) CFLAGS="$(FUZZ_CFLAGS)" $(FUZZ_TARGETS)

fuzz: fuzz-build
	scripts/fuzz $(FUZZ_BUILD) $(FUZZ_SECONDS)

install: $(BUILD)/securestreams
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(BUILD)/securestreams $(DESTDIR)$(PREFIX)/bin/securestreams

deps:
	./scripts/install-deps

# The SGX backend's enclave, built and signed with Gramine (untested here).
sgx: all
	$(MAKE) -C sgx

bench: all
	scripts/bench $(ROWS) 1
	scripts/bench $(ROWS) $(WORKERS)

# The three runs (every test, the fast tier under the sanitizers, each fuzz
# target for CHECK_FUZZ_SECONDS) append their counts to one file and close
# with a subtotal; the last line adds them up (a run that reported nothing
# counts as a failure).
CHECK_FUZZ_SECONDS = 8
check: deps
	@rm -f $(BUILD)/check.counts
	$(MAKE) $(CHECK_JOBS) all unit $(BUILD)/memscan
	-tests/run.sh --counts $(BUILD)/check.counts $(BUILD)
	$(MAKE) $(CHECK_JOBS) BUILD=$(SAN_BUILD) CFLAGS="$(SAN_CFLAGS)" all unit $(SAN_BUILD)/memscan
	-tests/run.sh --tier fast --sanitized --counts $(BUILD)/check.counts $(SAN_BUILD)
	$(MAKE) fuzz-build
	-scripts/fuzz $(FUZZ_BUILD) $(CHECK_FUZZ_SECONDS) --counts $(BUILD)/check.counts
	@awk '{ p += $$1; f += $$2 } END { if (NR != 3) f++; printf "%d passed, %d failed\n", p, f; exit f > 0 }' \
	    $(BUILD)/check.counts

demo: deps
	$(MAKE) all
	@mkdir -p out
	@test -s out/flights-$(ROWS).csv || $(BUILD)/securestreams gen flights --rows $(ROWS) -o out/flights-$(ROWS).csv
	@test -s out/demo.key || $(BUILD)/securestreams keygen -o out/demo.key
	$(BUILD)/securestreams run examples/flights/flights.spec.lua --input out/flights-$(ROWS).csv \
	    --security $(SECURITY) --key out/demo.key --workers $(WORKERS)

clean:
	rm -rf build build-asan

# The evaluation (docs/evaluation.md): out/bench/NAME/results.txt and plots.
.PHONY: bench-all bench-large bench-seed bench-memory bench-ecall bench-copy bench-lua \
        bench-throughput bench-scale bench-compare bench-profile
bench-all: all
	scripts/bench-all $(ROWS)
bench-large: all
	scripts/bench-all 10000000
bench-seed: all
	LUA_SIZES=seed scripts/bench-all 28700000
# Memory stays flat over the seed's full size (28.7 million rows), unless ROWS=
# is given on the command line or in the environment.
bench-memory: all
	scripts/bench-memory $(if $(filter file,$(origin ROWS)),28700000,$(ROWS))
bench-ecall bench-copy bench-lua bench-throughput bench-scale bench-compare bench-profile: all
	scripts/$@ $(ROWS)

-include $(OBJS:.o=.d) $(BUILD)/tests/test.d $(TESTS:=.d) $(ATTACKS:=.d)

# Docker images (docs/deploy.md). `image` needs no registry: FROM scratch with
# this machine's binary and libraries. `image-debian` builds the Dockerfile,
# which pulls debian:bookworm and debian:bookworm-slim.
IMAGE        ?= securestreams:latest
IMAGE_DEBIAN ?= securestreams:debian
.PHONY: image image-debian
image: $(BUILD)/securestreams
	docker/build-scratch-image $(BUILD)/securestreams $(IMAGE)

image-debian:
	docker build -t $(IMAGE_DEBIAN) .
