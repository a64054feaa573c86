# tollgate — one GNU Makefile. `make help` lists the targets.
#
# Builds three programs into build/ (or build-asan/ with `make asan`):
#   tollgate  the proxy daemon      (core/ net/ tls/ ledger/)
#   tollctl   the admin CLI         (tools/tollctl.c)
#   mockllm   the mock provider     (tools/mockllm.c)
# Missing Debian packages are installed first (tools/install-deps.sh).

V ?= 0
Q := $(if $(filter 1,$(V)),,@)
SAN ?=
BUILD ?= $(if $(SAN),build-asan,build)

CC      ?= gcc
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu17 -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter \
           -D_GNU_SOURCE -I. -MMD -MP -fno-strict-aliasing
ifeq ($(SAN),1)
CFLAGS  += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
MALLOC_LIB :=
else
MALLOC_LIB := -ljemalloc
endif
LDLIBS  := -luring -lfyaml -lhttp_parser -lxxhash -lmbedtls -lmbedx509 -lmbedcrypto -lpthread $(MALLOC_LIB)

TOLLGATE_SRC := $(wildcard core/*.c net/*.c tls/*.c ledger/*.c)
LIB_SRC      := $(filter-out core/main.c,$(TOLLGATE_SRC))
LIB_OBJ      := $(LIB_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC     := $(wildcard tests/unit/*/*.c)
UNIT_BIN     := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

PROGS := $(BUILD)/tollgate $(BUILD)/tollctl $(BUILD)/mockllm $(BUILD)/bench_budget \
         $(BUILD)/bench_ledger $(BUILD)/bench_stream

.PHONY: all deps run test unit e2e asan fuzz bench clean help
all: deps $(PROGS)

help:
	@echo "make            build tollgate, tollctl, mockllm into build/"
	@echo "make run        build, start mockllm and tollgate on conf/tollgate.yaml"
	@echo "make test       install deps, build, run unit + end-to-end tests (release and ASan+UBSan)"
	@echo "make unit       unit tests only      make e2e   end-to-end tests only"
	@echo "make asan       build with ASan+UBSan into build-asan/"
	@echo "make fuzz       build and briefly run the libFuzzer harnesses (clang)"
	@echo "make bench      run bench/run.sh (wrk vs nginx, HAProxy, mockllm direct)"
	@echo "V=1             show commands"

deps:
	$(Q)tools/install-deps.sh build

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libtollgate.a: $(LIB_OBJ)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/tollgate: $(BUILD)/core/main.o $(BUILD)/libtollgate.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

TOLLCTL_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tools/tollctl*.c))
$(BUILD)/tollctl: $(TOLLCTL_OBJ) $(BUILD)/libtollgate.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

MOCK_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tools/mockllm*.c))
$(BUILD)/mockllm: $(MOCK_OBJ) $(BUILD)/libtollgate.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/bench_budget: $(BUILD)/bench/budget_micro.o $(BUILD)/libtollgate.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/bench_ledger: $(BUILD)/bench/ledger_micro.o $(BUILD)/libtollgate.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/bench_stream: $(BUILD)/bench/stream_micro.o $(BUILD)/libtollgate.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# A synthetic ledger for bench/report_bench.sh; not part of `make`.
$(BUILD)/ledgergen: $(BUILD)/tools/ledgergen.o $(BUILD)/libtollgate.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# Unit tests mirror the tree and may #include the .c under test.
$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libtollgate.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  TEST-CC $<")
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) $< $(BUILD)/libtollgate.a -o $@ $(LDLIBS)

run: all
	$(Q)tools/run-demo.sh $(BUILD)

unit: deps $(UNIT_BIN)
	$(Q)tools/install-deps.sh test
	$(Q)tests/run-unit.sh $(UNIT_BIN)

e2e: all
	$(Q)tools/install-deps.sh test
	$(Q)python3 tests/e2e/run.py --build $(BUILD)

asan:
	$(Q)$(MAKE) --no-print-directory SAN=1 all

# The full suite: release build, then the same tests under ASan+UBSan.
test:
	$(Q)tools/install-deps.sh test
	$(Q)tests/run-all.sh

FUZZ_SECONDS ?= 30
fuzz: deps
	$(Q)tools/install-deps.sh test
	$(Q)tests/fuzz/run.sh $(FUZZ_SECONDS)

bench: all
	$(Q)tools/install-deps.sh bench
	$(Q)bench/run.sh

clean:
	rm -rf build build-asan build-fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
